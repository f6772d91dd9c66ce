//! Joining a channel: from a `phx_join` payload to bindings, the reply that
//! echoes them, and the `system` notices Supabase sends after it.
//!
//! Owns binding ids (a stable hash of the raw binding object, so identical
//! objects get identical ids, below 2^27 like Supabase's `phash2`), the
//! validation of schema/table/filter against the enabled tables, and the
//! exact texts of subscription errors. Does no IO and never fails a join for
//! a bad binding: like Supabase, the join succeeds and the binding's error
//! arrives as a `system` message, while good bindings keep working.

use serde_json::{json, Map, Value};

use super::filter::{self, FilterError};
use super::registry::{Binding, EventFilter};
use super::selection::{self, Selection, SelectionError};
use crate::changes::change::Op;
use crate::changes::tables::Tables;

/// A `system` message to push after the join reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `status: ok` (else `error`).
    pub ok: bool,
    pub message: String,
}

/// What a join asks for, checked.
#[derive(Debug)]
pub struct JoinPlan {
    /// `response` of the `ok` reply: `{postgres_changes: [...]}` echoing each binding with its id.
    pub response: Value,
    /// The bindings that can deliver.
    pub bindings: Vec<Binding>,
    /// Notices for the `postgres_changes` extension, in order.
    pub notices: Vec<Notice>,
    /// `config.broadcast.self`.
    pub broadcast_self: bool,
    /// `config.broadcast.ack`.
    pub broadcast_ack: bool,
    /// `config.broadcast.replication_ready`: the join asks to be told that database broadcasts flow.
    pub replication_ready: bool,
    /// `config.presence.enabled`: the channel gets `presence_state` and `presence_diff`.
    pub presence_enabled: bool,
    /// `config.presence.key`, or a fresh one when it is empty or absent.
    pub presence_key: String,
    /// Some binding named a table the cache does not know (it may have just been enabled).
    pub unknown_tables: bool,
    /// Pattern conditions the accepted bindings hold (see `filter::MAX_PATTERNS_PER_SOCKET`).
    pub patterns: usize,
}

/// Most `postgres_changes` bindings one join may carry. Supabase sets none;
/// every binding is evaluated for every change the channel may see, so the
/// number is what bounds one channel's cost on the fan-out path.
pub const MAX_BINDINGS_PER_CHANNEL: usize = 100;

/// Why a join is refused; `Display` is the reason sent in the error reply,
/// in Supabase's `Code: message` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// Past the joins-per-second limit; the socket is closed after the reply.
    #[error("ClientJoinRateLimitReached: Too many joins per second")]
    JoinRate,
    /// Not a `realtime:` topic.
    #[error("unmatched topic")]
    UnmatchedTopic,
    /// `realtime:` with nothing after it.
    #[error("TopicNameRequired: You must provide a topic name")]
    TopicNameRequired,
    /// Past `max_channels_per_client`.
    #[error("ChannelRateLimitReached: Too many channels")]
    TooManyChannels,
    /// Past `MAX_BINDINGS_PER_CHANNEL`; carries the count asked for.
    #[error("TooManyBindings: at most 100 postgres_changes bindings per channel, got {0}")]
    TooManyBindings(usize),
    /// The join's token was refused; carries `AuthError::join_reason`.
    #[error("{0}")]
    Token(String),
    /// A public join where only private channels are allowed (`--private-only`).
    #[error("PrivateOnly: This project only allows private channels")]
    PrivateOnly,
    /// The private topic's policies let this token read nothing.
    #[error("Unauthorized: You do not have permissions to read from this Channel topic: {0}")]
    Unauthorized(String),
    /// A replay that cannot be served; carries Supabase's `UnableToReplayMessages: ...` reason.
    #[error("{0}")]
    Replay(String),
    /// The policies could not be asked (Supabase's text has no code here).
    #[error("Realtime was unable to connect to the project database")]
    PolicySetup,
    /// The change feed did not come up in time.
    #[error("UnableToConnectToProject: Realtime was unable to connect to the project database")]
    NotLive,
}

impl JoinRefusal {
    /// A short, fixed name for metrics (`rowcast_joins_total{outcome=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            JoinRefusal::JoinRate => "join_rate",
            JoinRefusal::UnmatchedTopic => "unmatched_topic",
            JoinRefusal::TopicNameRequired => "topic_name_required",
            JoinRefusal::TooManyChannels => "too_many_channels",
            JoinRefusal::TooManyBindings(_) => "too_many_bindings",
            JoinRefusal::Token(_) => "token",
            JoinRefusal::PrivateOnly => "private_only",
            JoinRefusal::Unauthorized(_) => "unauthorized",
            JoinRefusal::Replay(_) => "replay",
            JoinRefusal::PolicySetup => "policy_setup",
            JoinRefusal::NotLive => "not_live",
        }
    }
}

/// The sub-topic (after `realtime:`) of a join's topic, or why it is refused.
pub fn sub_topic(topic: &str) -> Result<&str, JoinRefusal> {
    match topic.strip_prefix("realtime:") {
        None => Err(JoinRefusal::UnmatchedTopic),
        Some("") => Err(JoinRefusal::TopicNameRequired),
        Some(sub) => Ok(sub),
    }
}

/// Refuses a join whose `payload` carries more than `MAX_BINDINGS_PER_CHANNEL` bindings.
pub fn check_bindings(payload: &Value) -> Result<(), JoinRefusal> {
    let count = payload.get("config").and_then(|c| c.get("postgres_changes")).and_then(Value::as_array).map_or(0, Vec::len);
    if count > MAX_BINDINGS_PER_CHANNEL {
        return Err(JoinRefusal::TooManyBindings(count));
    }
    Ok(())
}

/// The id Supabase would give `raw`: a hash of its canonical JSON, below 2^27.
/// Never 0: realtime-js skips falsy ids, so a 0 would silently deliver nothing.
pub fn binding_id(raw: &Value) -> u32 {
    // FNV-1a; serde_json maps are sorted, so the text is canonical.
    let text = raw.to_string();
    let hash = text.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    (hash & ((1 << 27) - 1)).max(1)
}

/// Reads the join `payload` against the enabled `tables`; bindings may hold
/// at most `patterns_left` pattern conditions between them (the socket's
/// remaining budget), and the ones past it are refused.
pub fn plan(payload: &Value, tables: &Tables, patterns_left: usize) -> JoinPlan {
    let config = payload.get("config").cloned().unwrap_or(Value::Null);
    let raw_bindings: Vec<Value> = config.get("postgres_changes").and_then(Value::as_array).cloned().unwrap_or_default();
    let flag = |section: &str, key: &str| config.get(section).and_then(|s| s.get(key)).is_some_and(truthy);
    let mut plan = JoinPlan {
        response: Value::Null,
        bindings: Vec::new(),
        notices: Vec::new(),
        broadcast_self: flag("broadcast", "self"),
        broadcast_ack: flag("broadcast", "ack"),
        replication_ready: flag("broadcast", "replication_ready"),
        presence_enabled: flag("presence", "enabled"),
        presence_key: match config.get("presence").and_then(|p| p.get("key")) {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            // A number key is kept as its text; anything else gets a generated key, as Supabase does.
            Some(Value::Number(n)) => n.to_string(),
            _ => uuid::Uuid::new_v4().to_string(),
        },
        unknown_tables: false,
        patterns: 0,
    };
    let mut echoed = Vec::with_capacity(raw_bindings.len());
    for raw in &raw_bindings {
        let id = binding_id(raw);
        let mut echo = raw.as_object().cloned().unwrap_or_default();
        echo.insert("id".into(), json!(id));
        echoed.push(Value::Object(echo));
        match binding(id, raw, tables) {
            Ok(b) if plan.patterns + filter::patterns(&b.conditions) > patterns_left => {
                let obj = raw.as_object().cloned().unwrap_or_default();
                let e = FilterError::TooManyPatterns;
                plan.notices.push(Notice { ok: false, message: exception(&obj, e.sql_error(), &e.to_string()) });
            }
            Ok(b) => {
                plan.patterns += filter::patterns(&b.conditions);
                plan.bindings.push(b);
            }
            Err(Refusal::NotEnabled(message)) => {
                plan.unknown_tables = true;
                plan.notices.push(Notice { ok: false, message });
            }
            Err(Refusal::Invalid(message)) => plan.notices.push(Notice { ok: false, message }),
        }
    }
    if !plan.bindings.is_empty() {
        plan.notices.push(Notice { ok: true, message: "Subscribed to PostgreSQL".into() });
    }
    plan.response = json!({ "postgres_changes": echoed });
    plan
}

/// Supabase's FlexibleBoolean: true, "true".
fn truthy(v: &Value) -> bool {
    v.as_bool().unwrap_or_else(|| v.as_str() == Some("true"))
}

/// Why a binding cannot deliver.
enum Refusal {
    /// No enabled table matches (yet).
    NotEnabled(String),
    /// The binding itself is wrong.
    Invalid(String),
}

fn binding(id: u32, raw: &Value, tables: &Tables) -> Result<Binding, Refusal> {
    let obj = raw.as_object().cloned().unwrap_or_default();
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let (schema, table) = (text("schema"), text("table").filter(|t| t != "*"));
    if schema.is_none() && text("table").is_none() {
        return Err(Refusal::Invalid(format!(
            "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {}",
            describe(&obj)
        )));
    }
    let schema = schema.unwrap_or_else(|| "public".into());
    let event = match text("event").unwrap_or_default().to_ascii_uppercase().as_str() {
        "INSERT" => EventFilter::Only(Op::Insert),
        "UPDATE" => EventFilter::Only(Op::Update),
        "DELETE" => EventFilter::Only(Op::Delete),
        _ => EventFilter::All,
    };
    let filter_text = text("filter").unwrap_or_default();
    let conditions = filter::parse(&filter_text).map_err(|e| Refusal::Invalid(e.to_string()))?;
    let selected = selection::parse(&obj).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if selected.is_some() && (schema == "*" || table.is_none()) {
        return Err(Refusal::Invalid(SelectionError::Wildcard.to_string()));
    }
    let matching: Vec<_> = tables
        .all()
        .into_iter()
        .filter(|m| (schema == "*" || m.schema == schema) && table.as_ref().is_none_or(|t| *t == m.table))
        .collect();
    if matching.is_empty() {
        return Err(Refusal::NotEnabled(format!(
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: {}",
            describe(&obj)
        )));
    }
    let compiled = match (&table, matching.first()) {
        (Some(_), Some(meta)) => Some(
            filter::compile(&conditions, &meta.column_types())
                .map_err(|e| Refusal::Invalid(exception(&obj, e.sql_error(), &e.to_string())))?,
        ),
        _ => None,
    };
    let selection = match (selected, matching.first()) {
        (Some(names), Some(meta)) => Some(
            Selection::resolve(&names, meta)
                .map_err(|e| Refusal::Invalid(exception(&obj, Some(("P0001", "raise_exception")), &e.to_string())))?,
        ),
        _ => None,
    };
    Ok(Binding { id, event, schema, table, conditions, compiled, per_table: Default::default(), selection })
}

/// Supabase's wording for a subscription the database refused with the
/// error `sql` (code, condition name); without one, the message alone.
fn exception(obj: &Map<String, Value>, sql: Option<(&str, &str)>, message: &str) -> String {
    match sql {
        None => message.to_owned(),
        Some((code, name)) => format!(
            "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: {}. Exception: ERROR {code} ({name}) {message}",
            describe(obj)
        ),
    }
}

/// `[event: INSERT, schema: public, table: todos, filters: [...], select: nil]`, as Supabase prints params.
fn describe(obj: &Map<String, Value>) -> String {
    let text = |k: &str, default: &str| obj.get(k).and_then(Value::as_str).unwrap_or(default).to_owned();
    let filters = match obj.get("filter").and_then(Value::as_str) {
        Some(f) if !f.trim().is_empty() => format!("[{f}]"),
        _ => "[]".into(),
    };
    // Elixir's `inspect` of a list: `["a", "b"]`.
    let select = match obj.get("select") {
        None => "nil".to_owned(),
        Some(Value::Array(items)) => format!("[{}]", items.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")),
        Some(other) => other.to_string(),
    };
    format!(
        "[event: {}, schema: {}, table: {}, filters: {filters}, select: {select}]",
        text("event", "*"),
        text("schema", "public"),
        text("table", "*")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An enabled public table `public.t` with one text column `v`, its key.
    fn public_t() -> Tables {
        let mut tables = Tables::default();
        let t = crate::changes::change::TableMeta::owned_for_tests("t", &[("v", "text")]);
        tables.insert_for_tests(crate::changes::change::TableMeta { owner_column: None, public: true, ..t });
        tables
    }

    #[test]
    fn identical_bindings_get_identical_small_ids() {
        let a = json!({"event": "*", "schema": "public", "table": "t"});
        let b = json!({"table": "t", "schema": "public", "event": "*"});
        assert_eq!(binding_id(&a), binding_id(&b));
        assert!(binding_id(&a) < (1 << 27));
        assert_ne!(binding_id(&a), binding_id(&json!({"event": "INSERT", "schema": "public", "table": "t"})));
    }

    #[test]
    fn the_reply_echoes_every_binding_in_order_even_when_one_is_bad() {
        let payload = json!({"config": {"postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": "nope"},
            {"event": "*", "schema": "public", "table": "other", "filter": "a=eq.1", "select": ["a"]}
        ]}});
        let plan = plan(&payload, &Tables::default(), 16);
        let echoed = plan.response["postgres_changes"].as_array().unwrap();
        assert_eq!(echoed.len(), 2);
        assert_eq!(echoed[0]["table"], "nope");
        assert_eq!(echoed[1]["select"], json!(["a"]));
        assert!(echoed[1]["id"].is_u64());
        assert!(plan.bindings.is_empty());
        assert_eq!(plan.notices.len(), 2);
        assert!(plan.notices[0]
            .message
            .starts_with("Unable to subscribe to changes with given parameters. Please check Realtime is enabled"));
        assert!(plan.notices[0].message.ends_with("[event: INSERT, schema: public, table: nope, filters: [], select: nil]"));
    }

    #[test]
    fn a_join_without_bindings_replies_with_an_empty_list_and_no_notice() {
        let plan = plan(&json!({"config": {"broadcast": {"self": "true"}}}), &Tables::default(), 16);
        assert_eq!(plan.response, json!({"postgres_changes": []}));
        assert!(plan.notices.is_empty());
        assert!(plan.broadcast_self);
    }

    #[test]
    fn a_join_with_more_bindings_than_the_cap_is_refused_and_one_at_the_cap_is_not() {
        let bindings = |n: usize| json!({"config": {"postgres_changes": vec![json!({"event": "*", "schema": "public"}); n]}});
        assert_eq!(check_bindings(&bindings(MAX_BINDINGS_PER_CHANNEL)), Ok(()));
        let refusal = check_bindings(&bindings(101)).unwrap_err();
        assert_eq!(refusal.to_string(), "TooManyBindings: at most 100 postgres_changes bindings per channel, got 101");
    }

    #[test]
    fn topics_are_checked_in_supabase_terms() {
        assert_eq!(sub_topic("realtime:room"), Ok("room"));
        assert_eq!(sub_topic("realtime:").unwrap_err().to_string(), "TopicNameRequired: You must provide a topic name");
        assert_eq!(sub_topic("room"), Err(JoinRefusal::UnmatchedTopic));
    }

    #[test]
    fn bindings_past_the_pattern_budget_are_refused_and_the_others_kept() {
        let tables = public_t();
        let b = |f: &str| json!({"event": "*", "schema": "public", "table": "t", "filter": f});
        let payload = json!({"config": {"postgres_changes": [b("v=like.a%"), b("v=ilike.%b,v=match.c"), b("v=eq.x")]}});
        let plan = plan(&payload, &tables, 2);
        assert_eq!(plan.bindings.len(), 2, "the first and the pattern-free binding");
        assert_eq!(plan.patterns, 1);
        assert!(plan.notices[0].message.ends_with("too many pattern filters on one connection. Maximum 16"), "{}", plan.notices[0].message);
    }

    #[test]
    fn a_binding_without_schema_or_table_is_refused_with_supabase_text() {
        let plan = plan(&json!({"config": {"postgres_changes": [{"event": "*"}]}}), &Tables::default(), 16);
        assert!(plan.notices[0].message.starts_with("No subscription params provided."));
    }

    #[test]
    fn an_unknown_selected_column_is_a_p0001_exception_naming_the_params_as_supabase_prints_them() {
        let tables = public_t();
        let payload = json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "t", "select": ["v", "w"]}]}});
        let plan = plan(&payload, &tables, 16);
        assert!(plan.bindings.is_empty());
        assert_eq!(
            plan.notices[0].message,
            "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: \
             [event: *, schema: public, table: t, filters: [], select: [\"v\", \"w\"]]. Exception: ERROR P0001 (raise_exception) \
             invalid column for select w"
        );
    }
}
