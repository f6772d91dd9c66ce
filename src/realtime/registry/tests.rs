//! Unit tests of the registry: routing by owner and claim, frames shared
//! between sockets, selections, broadcasts.

use super::*;
use crate::changes::window::Position;
use crate::realtime::outbox::Bounds;
use chrono::Utc;
use serde_json::{json, Value};

fn meta(public: bool) -> TableMeta {
    let owned = TableMeta::owned_for_tests("todos", &[("id", "int8"), ("user_id", "text")]);
    TableMeta { owner_column: (!public).then(|| "user_id".into()), public, ..owned }
}

fn change(owner: &str) -> Change {
    let record = json!({"id": 1, "user_id": owner}).as_object().cloned();
    Change {
        id: 1,
        changed_at: Utc::now(),
        schema: "public".into(),
        table: "todos".into(),
        op: Op::Insert,
        owner: Some(owner.into()),
        record,
        old_record: None,
    }
}

fn deliver(r: &Registry, change: Change, meta: TableMeta) {
    r.deliver(&Arc::new(change), &Arc::new(meta));
}

fn principal(role: &str, sub: Option<&str>) -> Principal {
    Principal::new(role, sub, i64::MAX)
}

fn binding(id: u32) -> Binding {
    Binding {
        id,
        event: EventFilter::All,
        schema: "public".into(),
        table: Some("todos".into()),
        conditions: Vec::new(),
        compiled: None,
        per_table: PerTable::default(),
        selection: None,
    }
}

/// A socket's queue and a subscription of `topic` on it.
fn subscribe(r: &Registry, topic: &str, who: Principal, vsn: Vsn) -> (Outbox, SubId) {
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    let route = Route { outbox: outbox.clone(), vsn };
    let id = r.insert(Subscription::new(topic.into(), route, who, vec![binding(7)], false));
    (outbox, id)
}

/// The frames queued on `outbox`, as JSON.
fn drain(outbox: &Outbox) -> Vec<Value> {
    outbox.take_frames().iter().map(|bytes| serde_json::from_slice(bytes).unwrap()).collect()
}

#[test]
fn an_owned_change_reaches_its_owner_and_the_service_role_only() {
    let r = Registry::new(1 << 20);
    let (alice, _) = subscribe(&r, "realtime:a", principal("authenticated", Some("alice")), Vsn::V2);
    let (bob, _) = subscribe(&r, "realtime:b", principal("authenticated", Some("bob")), Vsn::V2);
    let (service, _) = subscribe(&r, "realtime:s", principal("service_role", None), Vsn::V2);
    let (anon, _) = subscribe(&r, "realtime:n", principal("anon", None), Vsn::V2);
    deliver(&r, change("alice"), meta(false));
    let frames = drain(&alice);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0][2], "realtime:a");
    assert_eq!(frames[0][4]["ids"], json!([7]));
    assert_eq!(drain(&service).len(), 1);
    assert!(drain(&bob).is_empty());
    assert!(drain(&anon).is_empty());
}

#[test]
fn a_public_change_reaches_everyone_in_each_ones_serializer() {
    let r = Registry::new(1 << 20);
    let (v1, _) = subscribe(&r, "realtime:p", principal("anon", None), Vsn::V1);
    let (v2, _) = subscribe(&r, "realtime:p", principal("anon", None), Vsn::V2);
    deliver(&r, change("x"), meta(true));
    assert_eq!(drain(&v1)[0]["event"], "postgres_changes");
    assert_eq!(drain(&v2)[0][3], "postgres_changes");
}

#[test]
fn sockets_on_one_channel_share_one_encoded_frame() {
    let r = Registry::new(1 << 20);
    let (a, _) = subscribe(&r, "realtime:p", principal("anon", None), Vsn::V2);
    let (b, _) = subscribe(&r, "realtime:p", principal("anon", None), Vsn::V2);
    deliver(&r, change("x"), meta(true));
    let take = |o: &Outbox| o.take_frames().pop().expect("a frame");
    assert_eq!(take(&a).as_ptr(), take(&b).as_ptr(), "one buffer, not a copy per socket");
}

#[test]
fn a_removed_subscription_gets_nothing_and_leaves_no_index_behind() {
    let r = Registry::new(1 << 20);
    let (alice, id) = subscribe(&r, "realtime:a", principal("authenticated", Some("alice")), Vsn::V2);
    r.remove(id);
    deliver(&r, change("alice"), meta(false));
    assert!(drain(&alice).is_empty());
    assert!(r.is_empty());
    assert!(r.inner.by_owner.is_empty());
}

#[test]
fn a_new_principal_moves_the_subscription_to_the_new_owner() {
    let r = Registry::new(1 << 20);
    let (socket, id) = subscribe(&r, "realtime:a", principal("authenticated", Some("alice")), Vsn::V2);
    r.set_principal(id, principal("authenticated", Some("bob")));
    deliver(&r, change("alice"), meta(false));
    assert!(drain(&socket).is_empty(), "alice's rows are no longer this channel's");
    deliver(&r, change("bob"), meta(false));
    assert_eq!(drain(&socket).len(), 1);
    assert!(!r.inner.by_owner.contains_key(&(ClaimPath::sub(), "alice".to_owned())));
}

fn member_of(sub: &str, org: &str, teams: &[&str]) -> Principal {
    let mut p = principal("authenticated", Some(sub));
    Arc::make_mut(&mut p.claims).insert("app_metadata".into(), json!({"org_id": org, "team_ids": teams}));
    p
}

fn owned_by_claim(claim: &str) -> TableMeta {
    TableMeta { owner_claim: Some(ClaimPath::parse(claim).unwrap()), ..meta(false) }
}

#[test]
fn a_change_owned_by_an_organisation_reaches_its_members_joined_before_the_claim_was_first_seen() {
    let r = Registry::new(1 << 20);
    let (ann, _) = subscribe(&r, "realtime:a", member_of("ann", "acme", &[]), Vsn::V2);
    let (ben, _) = subscribe(&r, "realtime:b", member_of("ben", "acme", &[]), Vsn::V2);
    let (eve, _) = subscribe(&r, "realtime:e", member_of("eve", "evil", &[]), Vsn::V2);
    deliver(&r, change("acme"), owned_by_claim("app_metadata.org_id"));
    assert_eq!((drain(&ann).len(), drain(&ben).len()), (1, 1));
    assert!(drain(&eve).is_empty());
    // Joined after: indexed under the claim at insert.
    let (cat, _) = subscribe(&r, "realtime:c", member_of("cat", "acme", &[]), Vsn::V2);
    deliver(&r, change("acme"), owned_by_claim("app_metadata.org_id"));
    assert_eq!(drain(&cat).len(), 1);
    // A user id equal to the org id sees nothing through `sub`-owned tables of that id.
    deliver(&r, change("acme"), meta(false));
    assert!(drain(&cat).is_empty());
}

#[test]
fn an_array_claim_means_membership_and_a_table_whose_claim_does_not_parse_shows_only_the_service_role() {
    let r = Registry::new(1 << 20);
    let (ann, _) = subscribe(&r, "realtime:a", member_of("ann", "acme", &["red", "blue"]), Vsn::V2);
    let (service, _) = subscribe(&r, "realtime:s", principal("service_role", None), Vsn::V2);
    deliver(&r, change("blue"), owned_by_claim("app_metadata.team_ids"));
    deliver(&r, change("green"), owned_by_claim("app_metadata.team_ids"));
    assert_eq!(drain(&ann).len(), 1);
    assert_eq!(drain(&service).len(), 2);
    let unparsed = TableMeta { owner_claim: None, ..meta(false) };
    deliver(&r, change("ann"), unparsed);
    assert!(drain(&ann).is_empty());
    assert_eq!(drain(&service).len(), 1);
}

#[test]
fn bindings_with_different_selections_get_one_frame_each_with_their_own_columns() {
    let r = Registry::new(1 << 20);
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
    let narrow = Binding { selection: Some(Selection::resolve(&[], &meta(false)).unwrap()), ..binding(8) };
    r.insert(Subscription::new("realtime:a".into(), route, principal("authenticated", Some("alice")), vec![binding(7), narrow], false));
    deliver(&r, change("alice"), meta(false));
    let frames = drain(&outbox);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0][4]["ids"], json!([7]));
    assert_eq!(frames[0][4]["data"]["record"], json!({"id": 1, "user_id": "alice"}));
    assert_eq!(frames[1][4]["ids"], json!([8]));
    assert_eq!(frames[1][4]["data"]["record"], json!({"id": 1}));
    assert_eq!(frames[1][4]["data"]["columns"], json!([{"name": "id", "type": "int8"}]));
}

#[test]
fn a_broadcast_skips_its_sender_unless_it_asked_for_self() {
    let r = Registry::new(1 << 20);
    let (sender, from) = subscribe(&r, "realtime:room", principal("anon", None), Vsn::V2);
    let (other, _) = subscribe(&r, "realtime:room", principal("anon", None), Vsn::V2);
    let (elsewhere, _) = subscribe(&r, "realtime:hall", principal("anon", None), Vsn::V2);
    r.broadcast(Origin::Socket(from), "realtime:room", false, r#"{"type":"broadcast","event":"e","payload":{}}"#);
    assert!(drain(&sender).is_empty());
    assert_eq!(drain(&other)[0][4]["event"], "e");
    assert!(drain(&elsewhere).is_empty());
}

fn numbered(id: i64) -> Change {
    Change { id, ..change("alice") }
}

/// The change ids of the `postgres_changes` frames queued on `outbox`, in order.
fn change_ids(outbox: &Outbox) -> Vec<i64> {
    drain(outbox).iter().filter(|f| f[3] == "postgres_changes").map(|f| f[4]["data"]["record"]["n"].as_i64().unwrap()).collect()
}

#[test]
fn a_resuming_channel_gets_the_missed_changes_once_in_order_then_what_arrived_while_its_replay_was_read() {
    let r = Registry::keeping_recent(1 << 20, Metrics::new().realtime, Duration::from_secs(30));
    r.starting_at(0);
    let with_n = |id: i64| {
        let mut c = numbered(id);
        c.record = json!({"id": 1, "user_id": "alice", "n": id}).as_object().cloned();
        c
    };
    for id in 1..=4 {
        deliver(&r, with_n(id), meta(false));
    }
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
    let sub = Subscription::new("realtime:a".into(), route, principal("authenticated", Some("alice")), vec![binding(7)], false);
    let (id, since) = r.join_resuming(sub, &outbox, Vec::new(), &Position { high_water: 2, gaps: Vec::new() });
    assert!(since.complete, "3 and 4 were delivered here after the reader started");
    // Delivered while the replay is being read: held, not queued ahead of it.
    deliver(&r, with_n(5), meta(false));
    assert!(change_ids(&outbox).is_empty());
    // A log read (as when the kept changes are not complete) finds 3, 4 and 5, all seen elsewhere too.
    let older = [3, 4, 5].map(|n| (Arc::new(with_n(n)), Some(Arc::new(meta(false))))).to_vec();
    let replay = r.replay(id, &older, since);
    assert_eq!(replay.changes, 3);
    for frame in &replay.frames {
        outbox.push(frame.clone());
    }
    assert!(r.take_held(id, &replay).is_empty(), "5, held, came with the replay: nothing held is new, and it is live");
    deliver(&r, with_n(6), meta(false));
    assert_eq!(change_ids(&outbox), vec![3, 4, 5, 6], "each change once, in order, then live ones");
}

#[test]
fn a_resuming_channel_replays_only_what_it_may_see_and_its_bindings_match() {
    let r = Registry::keeping_recent(1 << 20, Metrics::new().realtime, Duration::from_secs(30));
    r.starting_at(0);
    deliver(&r, Change { id: 1, ..change("bob") }, meta(false));
    deliver(&r, Change { id: 2, ..change("alice") }, meta(false));
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
    let sub = Subscription::new("realtime:a".into(), route, principal("authenticated", Some("alice")), vec![binding(7)], false);
    let (id, since) = r.join_resuming(sub, &outbox, Vec::new(), &Position { high_water: 0, gaps: Vec::new() });
    let replay = r.replay(id, &[], since);
    assert_eq!(replay.changes, 1, "bob's row is not alice's to see");
    for frame in &replay.frames {
        outbox.push(frame.clone());
    }
    assert!(r.take_held(id, &replay).is_empty(), "nothing was held: it is live");
    let frames = drain(&outbox);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0][4]["data"]["record"]["user_id"], "alice");
}

#[test]
fn draining_lists_each_handoff_key_once_with_its_channels() {
    let r = Registry::new(1 << 20);
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    for key in [Some([1u8; 32]), Some([1u8; 32]), Some([2u8; 32]), None] {
        let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
        r.insert(Subscription::new("realtime:a".into(), route, principal("anon", None), vec![binding(7)], false).handoff(key));
    }
    assert_eq!(r.handoff_keys(), vec![([1u8; 32], 2), ([2u8; 32], 1)]);
}

#[test]
fn what_arrives_while_a_replay_is_queued_is_taken_until_none_is_left_then_the_channel_is_live() {
    let r = Registry::keeping_recent(1 << 20, Metrics::new().realtime, Duration::from_secs(30));
    r.starting_at(0);
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
    let sub = Subscription::new("realtime:a".into(), route, principal("authenticated", Some("alice")), vec![binding(7)], false);
    let (id, since) = r.join_resuming(sub, &outbox, Vec::new(), &Position { high_water: 0, gaps: Vec::new() });
    let replay = r.replay(id, &[], since);
    assert_eq!(replay.changes, 0);
    deliver(&r, Change { id: 2, ..change("alice") }, meta(false));
    deliver(&r, Change { id: 3, ..change("alice") }, meta(false));
    assert!(drain(&outbox).is_empty(), "held, not queued");
    assert_eq!(r.take_held(id, &replay).len(), 2);
    deliver(&r, Change { id: 4, ..change("alice") }, meta(false));
    assert_eq!(r.take_held(id, &replay).len(), 1, "held while the first two went out");
    assert!(r.take_held(id, &replay).is_empty());
    deliver(&r, Change { id: 5, ..change("alice") }, meta(false));
    assert_eq!(drain(&outbox).len(), 1, "live: queued directly");
}

#[test]
fn a_resuming_channel_replays_the_sql_broadcasts_to_its_topic_and_namespace_it_missed() {
    let r = Registry::keeping_recent(1 << 20, Metrics::new().realtime, Duration::from_secs(30));
    r.starting_at(0);
    let sent = |id: i64, topic: &str, private: bool| {
        let record = json!({"topic": topic, "event": "missed", "extension": "broadcast", "private": private, "payload": {"id": id}});
        Arc::new(Change { id, schema: "realtime".into(), table: "messages".into(), record: record.as_object().cloned(), ..change("x") })
    };
    r.deliver_message(&sent(1, "room", false));
    r.deliver_message(&sent(2, "hall", false));
    r.deliver_message(&sent(3, "room", true));
    r.deliver_message(&sent(4, "room", false));
    let outbox = Outbox::new(Bounds { frames: 100, bytes: 1 << 20 });
    let route = Route { outbox: outbox.clone(), vsn: Vsn::V2 };
    let sub = Subscription::new("realtime:room".into(), route, principal("anon", None), Vec::new(), false);
    let (id, since) = r.join_resuming(sub, &outbox, Vec::new(), &Position { high_water: 0, gaps: Vec::new() });
    let replay = r.replay(id, &[], since);
    assert_eq!(replay.changes, 2, "the public room's two, not the hall's or the private room's");
    let frames: Vec<Value> = replay.frames.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
    assert_eq!((frames[0][3].as_str(), frames[0][4]["payload"]["id"].as_i64()), (Some("broadcast"), Some(1)));
    assert_eq!(frames[1][4]["payload"]["id"], 4);
    // One sent while it is resuming is held, then live ones are queued directly.
    r.deliver_message(&sent(5, "room", false));
    assert!(drain(&outbox).is_empty());
    assert_eq!(r.take_held(id, &replay).len(), 1);
    assert!(r.take_held(id, &replay).is_empty());
    r.deliver_message(&sent(6, "room", false));
    assert_eq!(drain(&outbox)[0][4]["payload"]["id"], 6);
}
