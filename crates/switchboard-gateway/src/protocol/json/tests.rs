//! The JSON codec's unit tests: decoding every command, naming bad fields, and
//! the exact bytes of replies and pushes.

use super::*;
use crate::protocol::ErrorCode;

fn ok(text: &str) -> Command {
    decode(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn bad(text: &str) -> DecodeError {
    decode(text.as_bytes()).expect_err(text)
}

#[test]
fn reads_every_command() {
    assert_eq!(
        ok(r#"{"type":"subscribe","id":1,"channel":"a"}"#),
        Command {
            id: Some(1),
            kind: CommandKind::Subscribe {
                channel: "a".into(),
                recover: None
            }
        }
    );
    let c = ok(r#"{"type":"subscribe","channel":"a","recover":{"epoch":"e","offset":4}}"#);
    assert!(matches!(
        c.kind,
        CommandKind::Subscribe {
            recover: Some(StreamPosition { offset: 4, .. }),
            ..
        }
    ));
    let c = ok(r#"{"type":"publish","channel":"a","data":{"x": [1, 2]}}"#);
    assert_eq!(
        c.kind,
        CommandKind::Publish {
            channel: "a".into(),
            data: Payload::json(Bytes::from_static(br#"{"x": [1, 2]}"#))
        }
    );
    let c = ok(r#"{"type":"publish","channel":"a","data":null}"#);
    assert!(matches!(c.kind, CommandKind::Publish { .. }));
    assert_eq!(ok(r#"{"type":"ping","id":7}"#).kind, CommandKind::Ping);
    assert!(matches!(
        ok(r#"{"type":"history","channel":"a","limit":3}"#).kind,
        CommandKind::History { limit: Some(3), .. }
    ));
    assert!(matches!(
        ok(r#"{"type":"presence","channel":"a"}"#).kind,
        CommandKind::Presence { .. }
    ));
    assert!(matches!(
        ok(r#"{"type":"unsubscribe","channel":"a"}"#).kind,
        CommandKind::Unsubscribe { .. }
    ));
}

#[test]
fn names_what_is_wrong_and_keeps_the_id() {
    assert!(bad("{").message.starts_with("malformed JSON"));
    assert_eq!(bad("[1]").message, "a command must be a JSON object");
    assert_eq!(bad("42").message, "a command must be a JSON object");
    let e = bad(r#"{"id":5}"#);
    assert_eq!((e.id, e.message.as_str()), (Some(5), "missing field: type"));
    let e = bad(r#"{"id":5,"type":"subscribe"}"#);
    assert_eq!(e.id, Some(5));
    assert!(e.message.contains("channel"));
    assert!(
        bad(r#"{"id":5,"type":"publish","channel":"a"}"#)
            .message
            .contains("data")
    );
    assert!(
        bad(r#"{"id":5,"type":"nope"}"#)
            .message
            .contains("unknown command type")
    );
    assert!(bad(r#"{"id":"x","type":"ping"}"#).message.contains("id"));
    assert!(bad(r#"{"id":-1,"type":"ping"}"#).message.contains("id"));
    assert!(bad(r#"{"type":7}"#).message.contains("type"));
    assert!(
        bad(r#"{"type":"subscribe","channel":7}"#)
            .message
            .contains("channel")
    );
}

#[test]
fn messages_splice_json_and_base64_binary() {
    let json = Bytes::from_static(br#"{"x":1}"#);
    let m = encode_push(&Push::Message {
        channel: "a:b",
        payload: &json,
        encoding: PayloadEncoding::Json,
        position: None,
        event: "",
        publisher: "",
    });
    assert_eq!(
        &m[..],
        br#"{"type":"message","channel":"a:b","data":{"x":1}}"#
    );
    let m = encode_push(&Push::Message {
        channel: "a:b",
        payload: &json,
        encoding: PayloadEncoding::Json,
        position: Some((43, "f3a9")),
        event: "",
        publisher: "",
    });
    assert_eq!(
        &m[..],
        br#"{"type":"message","channel":"a:b","data":{"x":1},"offset":43,"epoch":"f3a9"}"#
    );
    let binary = Bytes::from_static(&[0xff, 0]);
    let m = encode_push(&Push::Message {
        channel: "a",
        payload: &binary,
        encoding: PayloadEncoding::Binary,
        position: None,
        event: "",
        publisher: "",
    });
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(v["data_b64"], "/wA=");
    let m = encode_push(&Push::UserMessage {
        user: "al\"ice",
        payload: &json,
        encoding: PayloadEncoding::Json,
    });
    assert_eq!(
        &m[..],
        br#"{"type":"message","user":"al\"ice","data":{"x":1}}"#
    );
    let m = encode_push(&Push::Join {
        info: "",
        channel: "c",
        conn: "c_1",
        user: "u",
        join: false,
    });
    assert_eq!(
        &m[..],
        br#"{"type":"leave","channel":"c","conn":"c_1","user":"u"}"#
    );
}

#[test]
fn publish_data_too_deep_or_with_a_lone_surrogate_is_refused() {
    let max = crate::protocol::payload::MAX_JSON_DEPTH;
    let publish =
        |data: &str| format!(r#"{{"type":"publish","id":8,"channel":"a","data":{data}}}"#);
    let deep = |d: usize| format!("{}1{}", "[".repeat(d), "]".repeat(d));
    assert!(matches!(
        ok(&publish(&deep(max))).kind,
        CommandKind::Publish { .. }
    ));
    let e = bad(&publish(&deep(max + 1)));
    assert_eq!(e.id, Some(8));
    assert!(e.message.contains(&max.to_string()), "{}", e.message);
    let e = bad(&publish(r#"{"t":"\ud800"}"#));
    assert!(e.message.contains("surrogate"), "{}", e.message);
    assert!(matches!(
        ok(&publish(r#""\ud83d\ude00""#)).kind,
        CommandKind::Publish { .. }
    ));
}

#[test]
fn data_marked_json_that_is_not_utf8_goes_as_base64() {
    let payload = Bytes::from_static(b"\"\xff\"");
    let m = encode_push(&Push::Message {
        channel: "a",
        payload: &payload,
        encoding: PayloadEncoding::Json,
        position: None,
        event: "",
        publisher: "",
    });
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(v["data_b64"], "Iv8i");
    assert!(v.get("data").is_none());
}

#[test]
fn replies_carry_type_first_and_the_id() {
    let r = encode_reply(
        Some(3),
        &Reply::Error {
            code: ErrorCode::BadRequest,
            message: "no",
        },
    );
    assert_eq!(
        &r[..],
        br#"{"type":"error","id":3,"code":"bad_request","message":"no"}"#
    );
    assert_eq!(&encode_reply(None, &Reply::Pong)[..], br#"{"type":"pong"}"#);
}
