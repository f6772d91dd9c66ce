//! The frame decoder: v1 objects, v2 arrays and kind-3 binary broadcasts.
//! Whatever arrives decodes or is `malformed message: ...`.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{config, json_value, splice, truncate};
use rowcast::realtime::protocol::{decode_binary, decode_text, Inbound, ProtocolError, Vsn};

fn in_protocol_terms(result: Result<Inbound, ProtocolError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let text = e.to_string();
        prop_assert!(text.starts_with("malformed message") || text.starts_with("unsupported vsn"), "{text}");
    }
    Ok(())
}

fn vsn(v2: bool) -> Vsn {
    if v2 {
        Vsn::V2
    } else {
        Vsn::V1
    }
}

// ---- text frames ----

/// What a client's text frame carries.
#[derive(Debug, Clone)]
struct Fields {
    join_ref: Option<String>,
    msg_ref: Option<String>,
    topic: String,
    event: String,
    payload: Value,
}

const V1_KEYS: [&str; 5] = ["join_ref", "ref", "topic", "event", "payload"];

fn fields() -> impl Strategy<Value = Fields> {
    let a_ref = prop::option::of("[0-9]{1,4}");
    let topic = prop_oneof![Just("phoenix".to_owned()), "realtime:\\PC{0,20}"];
    let event = prop_oneof![Just("phx_join".to_owned()), Just("heartbeat".to_owned()), "[a-z_]{1,12}"];
    (a_ref.clone(), a_ref, topic, event, json_value()).prop_map(|(join_ref, msg_ref, topic, event, payload)| Fields {
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    })
}

/// The frame as `vsn` spells it: an object or a five-element array.
fn frame(vsn: Vsn, f: &Fields) -> Value {
    let a_ref = |r: &Option<String>| r.clone().map_or(Value::Null, Value::String);
    let items = [a_ref(&f.join_ref), a_ref(&f.msg_ref), json!(f.topic), json!(f.event), f.payload.clone()];
    match vsn {
        Vsn::V1 => Value::Object(V1_KEYS.iter().map(|k| k.to_string()).zip(items).collect()),
        Vsn::V2 => Value::Array(items.into()),
    }
}

/// One thing wrong with an otherwise valid text frame.
#[derive(Debug, Clone)]
enum TextFault {
    /// Cut short after this many characters.
    Truncate(usize),
    /// Field `i` of five replaced by a value of any type.
    Replace(usize, Value),
    /// Field `i` of five left out.
    Remove(usize),
    /// One field too many (v1: under this key).
    Extra(String, Value),
    /// Stray text put in at a character position.
    Splice(usize, String),
    /// The payload nested this deep in arrays.
    Nest(usize),
    /// Decoded as the other vsn.
    OtherVsn,
}

fn text_fault() -> impl Strategy<Value = TextFault> {
    prop_oneof![
        any::<usize>().prop_map(TextFault::Truncate),
        (0..5usize, json_value()).prop_map(|(i, v)| TextFault::Replace(i, v)),
        (0..5usize).prop_map(TextFault::Remove),
        ("[a-z_]{0,8}", json_value()).prop_map(|(k, v)| TextFault::Extra(k, v)),
        (any::<usize>(), prop_oneof!["[\\[\\]{}\",:\\\\]{1,3}", ".{1,4}"]).prop_map(|(at, s)| TextFault::Splice(at, s)),
        (0..3000usize).prop_map(TextFault::Nest),
        Just(TextFault::OtherVsn),
    ]
}

/// The frame with `fault`, and the vsn it is decoded as.
fn faulty(v: Vsn, f: &Fields, fault: &TextFault) -> (Vsn, String) {
    let mut value = frame(v, f);
    let text = match (fault, &mut value) {
        (TextFault::Truncate(n), value) => truncate(&value.to_string(), *n),
        (TextFault::Splice(at, s), value) => splice(&value.to_string(), *at, s),
        (TextFault::Replace(i, x), Value::Object(m)) => {
            m.insert(V1_KEYS[*i].into(), x.clone());
            value.to_string()
        }
        (TextFault::Replace(i, x), Value::Array(a)) => {
            a[*i] = x.clone();
            value.to_string()
        }
        (TextFault::Remove(i), Value::Object(m)) => {
            m.remove(V1_KEYS[*i]);
            value.to_string()
        }
        (TextFault::Remove(i), Value::Array(a)) => {
            a.remove(*i);
            value.to_string()
        }
        (TextFault::Extra(k, x), Value::Object(m)) => {
            m.insert(k.clone(), x.clone());
            value.to_string()
        }
        (TextFault::Extra(_, x), Value::Array(a)) => {
            a.push(x.clone());
            value.to_string()
        }
        (TextFault::Nest(depth), _) => {
            let marker = Value::from("\u{1}payload\u{1}");
            let nested = format!("{}{}{}", "[".repeat(*depth), f.payload, "]".repeat(*depth));
            frame(v, &Fields { payload: marker.clone(), ..f.clone() }).to_string().replacen(&marker.to_string(), &nested, 1)
        }
        (TextFault::OtherVsn, value) => {
            return (if v == Vsn::V1 { Vsn::V2 } else { Vsn::V1 }, value.to_string());
        }
        (_, value) => value.to_string(),
    };
    (v, text)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn well_formed_text_frames_decode_to_the_fields_they_carry(f in fields(), v2 in any::<bool>()) {
        let m = decode_text(vsn(v2), &frame(vsn(v2), &f).to_string()).expect("a well-formed frame");
        prop_assert_eq!((m.join_ref, m.msg_ref, m.topic, m.event), (f.join_ref, f.msg_ref, f.topic, f.event));
        // serde_json's default float parsing may land one ulp off (no `float_roundtrip`), so
        // the payload is compared with its own text parsed, not with the value it was printed from.
        prop_assert_eq!(m.payload, serde_json::from_str::<Value>(&f.payload.to_string()).unwrap());
    }

    #[test]
    fn text_frames_with_one_fault_decode_or_are_malformed(f in fields(), v2 in any::<bool>(), fault in text_fault()) {
        let (v, text) = faulty(vsn(v2), &f, &fault);
        in_protocol_terms(decode_text(v, &text))?;
    }

    #[test]
    fn any_text_decodes_or_is_malformed(text in ".{0,200}", v2 in any::<bool>()) {
        in_protocol_terms(decode_text(vsn(v2), &text))?;
    }
}

// ---- binary frames ----

/// What a kind-3 broadcast push carries; every field fits its one-byte length.
#[derive(Debug, Clone)]
struct Broadcast {
    join_ref: String,
    msg_ref: String,
    topic: String,
    event: String,
    meta: String,
    /// Encoding 1 (JSON payload) or 0 (raw bytes).
    json: bool,
    payload: Vec<u8>,
}

fn broadcast() -> impl Strategy<Value = Broadcast> {
    let meta = prop_oneof![Just(String::new()), json_value().prop_map(|v| json!({ "m": v }).to_string())];
    let meta = meta.prop_filter("fits a one-byte length", |m| m.len() <= 255);
    let payload = prop_oneof![
        json_value().prop_map(|v| (true, v.to_string().into_bytes())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (false, b)),
    ];
    ("[0-9]{0,3}", "[0-9]{0,3}", "realtime:\\PC{0,30}", "\\PC{0,20}", meta, payload).prop_map(
        |(join_ref, msg_ref, topic, event, meta, (json, payload))| Broadcast { join_ref, msg_ref, topic, event, meta, json, payload },
    )
}

/// The 7-byte header (kind, five lengths, encoding), the fields, then the payload.
fn encode(b: &Broadcast) -> Vec<u8> {
    let fields = [&b.join_ref, &b.msg_ref, &b.topic, &b.event, &b.meta];
    let mut out = vec![3];
    out.extend(fields.iter().map(|f| u8::try_from(f.len()).expect("the generator keeps fields short")));
    out.push(u8::from(b.json));
    fields.iter().for_each(|f| out.extend_from_slice(f.as_bytes()));
    out.extend_from_slice(&b.payload);
    out
}

/// One thing wrong with an otherwise valid binary frame.
#[derive(Debug, Clone)]
enum ByteFault {
    /// Cut short after this many bytes.
    Truncate(usize),
    /// Length byte `i` of five set to any value, up to 255.
    Length(usize, u8),
    /// A byte after the header replaced by one that cannot start or continue UTF-8 there.
    NotUtf8(usize, u8),
    Encoding(u8),
    Kind(u8),
    Append(Vec<u8>),
}

fn byte_fault() -> impl Strategy<Value = ByteFault> {
    prop_oneof![
        any::<usize>().prop_map(ByteFault::Truncate),
        (0..5usize, any::<u8>()).prop_map(|(i, n)| ByteFault::Length(i, n)),
        (any::<usize>(), prop::sample::select(vec![0x80u8, 0xbf, 0xc0, 0xc3, 0xed, 0xf8, 0xff]))
            .prop_map(|(at, b)| ByteFault::NotUtf8(at, b)),
        any::<u8>().prop_map(ByteFault::Encoding),
        any::<u8>().prop_map(ByteFault::Kind),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(ByteFault::Append),
    ]
}

fn apply(mut frame: Vec<u8>, fault: &ByteFault) -> Vec<u8> {
    match fault {
        ByteFault::Truncate(n) => frame.truncate(n % frame.len()),
        ByteFault::Length(i, n) => frame[1 + i] = *n,
        ByteFault::NotUtf8(at, b) if frame.len() > 7 => {
            let at = 7 + at % (frame.len() - 7);
            frame[at] = *b;
        }
        ByteFault::NotUtf8(..) => {}
        ByteFault::Encoding(e) => frame[6] = *e,
        ByteFault::Kind(k) => frame[0] = *k,
        ByteFault::Append(bytes) => frame.extend_from_slice(bytes),
    }
    frame
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn well_formed_kind_3_frames_decode_to_the_broadcast_they_carry(b in broadcast()) {
        let m = decode_binary(&encode(&b)).expect("a well-formed frame");
        let body = if b.json { serde_json::from_slice(&b.payload).unwrap() } else { Value::Null };
        let raw = (!b.json).then(|| b.payload.clone());
        prop_assert_eq!(m.binary.as_deref(), raw.as_deref());
        prop_assert_eq!((m.topic.as_str(), m.event.as_str()), (b.topic.as_str(), "broadcast"));
        prop_assert_eq!((m.join_ref, m.msg_ref), (Some(b.join_ref).filter(|r| !r.is_empty()), Some(b.msg_ref).filter(|r| !r.is_empty())));
        prop_assert_eq!(&m.payload["event"], &json!(b.event));
        prop_assert_eq!(&m.payload["payload"], &body);
        let meta = if b.meta.is_empty() { Value::Null } else { serde_json::from_str(&b.meta).unwrap() };
        prop_assert_eq!(&m.payload["meta"], &meta);
    }

    #[test]
    fn kind_3_frames_with_one_fault_decode_or_are_malformed(b in broadcast(), fault in byte_fault()) {
        in_protocol_terms(decode_binary(&apply(encode(&b), &fault)))?;
    }

    #[test]
    fn any_bytes_decode_or_are_malformed(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        in_protocol_terms(decode_binary(&bytes))?;
    }
}
