//! Which published bytes a JSON client may receive verbatim as `data`.
//!
//! A JSON subscriber gets a channel message's payload spliced into a text frame.
//! So the node splices only what every JSON client can take: valid UTF-8 (a text
//! frame that is not is a protocol error, and the browser drops the connection),
//! valid JSON, nested at most [`MAX_JSON_DEPTH`] deep (parsers with a recursion
//! limit, serde_json's included, fail on deeper documents), and without `\u`
//! escapes of lone UTF-16 surrogates (strict parsers, serde_json's included,
//! refuse those; interoperable JSON excludes them).
//!
//! serde_json's skipping parse, used for `RawValue` and `IgnoredAny`, checks
//! none of the last two, nor UTF-8 inside strings when it reads bytes; so
//! [`check_json_text`] does, in one pass with no recursion and no allocation.

use serde::de::IgnoredAny;
use switchboard_backplane::envelope::PayloadEncoding;

/// Deepest nesting of arrays and objects accepted in published JSON data: `[[1]]`
/// is 2 deep. Deeper data is refused on `switchboard.v1.json` and by the server
/// API (`bad_request`), and relayed as `data_b64` from `switchboard.v1.proto`.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why bytes cannot go to JSON clients as `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// Not valid UTF-8.
    NotUtf8,
    /// Not one JSON value.
    NotJson,
    /// Arrays and objects nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
    /// A `\u` escape of a UTF-16 surrogate that is not half of a pair.
    LoneSurrogate,
}

impl Unfit {
    /// Why, for the client.
    pub fn describe(self) -> String {
        match self {
            Unfit::NotUtf8 => "data is not valid UTF-8".to_owned(),
            Unfit::NotJson => "data is not one JSON value".to_owned(),
            Unfit::TooDeep => {
                format!("data nests arrays and objects more than {MAX_JSON_DEPTH} deep")
            }
            Unfit::LoneSurrogate => {
                "data has a \\u escape of a lone UTF-16 surrogate (\\ud800-\\udfff not in a pair)"
                    .to_owned()
            }
        }
    }

    /// Counts a publish refused for this reason: `switchboard_limit_rejections_total`
    /// with `limit` `json_depth` or `json_surrogate`.
    pub(crate) fn count_refusal(self) {
        let limit = match self {
            Unfit::TooDeep => "json_depth",
            Unfit::LoneSurrogate => "json_surrogate",
            // Malformed data is a malformed command, answered like any other.
            Unfit::NotUtf8 | Unfit::NotJson => return,
        };
        metrics::counter!("switchboard_limit_rejections_total", "limit" => limit).increment(1);
    }
}

/// Whether arbitrary bytes (a protobuf publish) can go to JSON clients as `data`.
pub fn json_fitness(bytes: &[u8]) -> Result<(), Unfit> {
    let text = std::str::from_utf8(bytes).map_err(|_| Unfit::NotUtf8)?;
    // Depth first: it is cheap and bounds what the grammar check walks.
    check_json_text(text)?;
    serde_json::from_str::<IgnoredAny>(text).map_err(|_| Unfit::NotJson)?;
    Ok(())
}

/// The encoding of arbitrary bytes: JSON when they are fit to splice, binary
/// (`data_b64` for JSON clients) otherwise.
pub fn classify(bytes: &[u8]) -> PayloadEncoding {
    match json_fitness(bytes) {
        Ok(()) => PayloadEncoding::Json,
        Err(_) => PayloadEncoding::Binary,
    }
}

/// Checks text that serde_json accepted as JSON (its grammar is not re-checked)
/// for nesting deeper than [`MAX_JSON_DEPTH`] and for escapes of lone surrogates.
/// On text that is not JSON it still ends, in one pass.
pub fn check_json_text(text: &str) -> Result<(), Unfit> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Unfit::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = skip_string(b, i + 1)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Skips a string's content from `i` (just after its opening quote) to just after
/// its closing quote, checking `\u` escapes of surrogates pair up.
fn skip_string(b: &[u8], mut i: usize) -> Result<usize, Unfit> {
    while i < b.len() {
        match b[i] {
            b'"' => return Ok(i + 1),
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let unit = hex4(b, i + 2)?;
                i += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u') {
                            hex4(b, i + 2)?
                        } else {
                            0
                        };
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(Unfit::LoneSurrogate);
                        }
                        i += 6;
                    }
                    0xDC00..=0xDFFF => return Err(Unfit::LoneSurrogate),
                    _ => {}
                }
            }
            // Any other escape is two bytes; the grammar check vouches for it.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// The four hex digits at `i`, as a UTF-16 code unit.
fn hex4(b: &[u8], i: usize) -> Result<u16, Unfit> {
    let digits = b.get(i..i + 4).ok_or(Unfit::NotJson)?;
    let text = std::str::from_utf8(digits).map_err(|_| Unfit::NotJson)?;
    u16::from_str_radix(text, 16).map_err(|_| Unfit::NotJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(check_json_text(&nested(MAX_JSON_DEPTH)), Ok(()));
        assert_eq!(
            check_json_text(&nested(MAX_JSON_DEPTH + 1)),
            Err(Unfit::TooDeep)
        );
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_JSON_DEPTH + 1),
            "}".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(check_json_text(&objects), Err(Unfit::TooDeep));
        // Brackets in strings, escaped quotes and siblings do not nest.
        let in_string = format!(r#"["{}\"{}"]"#, "[".repeat(500), "{".repeat(500));
        assert_eq!(check_json_text(&in_string), Ok(()));
        let siblings = format!("[{}1]", "[[1],{}],".repeat(1000));
        assert_eq!(check_json_text(&siblings), Ok(()));
        // Far too deep is refused early and without recursion.
        assert_eq!(check_json_text(&nested(1_000_000)), Err(Unfit::TooDeep));
    }

    #[test]
    fn lone_surrogate_escapes_are_found() {
        for ok in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00""#,
            r#""\u0000\u00e9\uffff""#,
            r#""\\ud800""#,
            r#"{"\ud83d\ude00":1}"#,
        ] {
            assert_eq!(check_json_text(ok), Ok(()), "{ok}");
        }
        for bad in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\udbff\udbff""#,
            r#""\ud800x""#,
            r#""x\udfff""#,
            r#"{"\ud800":1}"#,
        ] {
            assert_eq!(check_json_text(bad), Err(Unfit::LoneSurrogate), "{bad}");
        }
    }

    #[test]
    fn classifies_what_json_clients_can_take() {
        for json in [
            &br#"{"x":[1,"\u00e9",null]}"#[..],
            b"1",
            b" null ",
            "\"\u{e9}\u{1F600}\u{2028}\"".as_bytes(),
            br#""\ud83d\ude00""#,
            b"123456789012345678901234567890",
        ] {
            assert_eq!(
                classify(json),
                PayloadEncoding::Json,
                "{:?}",
                String::from_utf8_lossy(json)
            );
        }
        for (bytes, why) in [
            (&b"\"\xff\""[..], Unfit::NotUtf8),
            (b"\"\xc0\xaf\"", Unfit::NotUtf8),
            (b"\"\xed\xa0\x80\"", Unfit::NotUtf8),
            (b"", Unfit::NotJson),
            (b"\xef\xbb\xbf{}", Unfit::NotJson),
            (b"\"a\x00\"", Unfit::NotJson),
            (b"{} {}", Unfit::NotJson),
            (br#""\ud800""#, Unfit::LoneSurrogate),
            (b"\x00\xff", Unfit::NotUtf8),
        ] {
            assert_eq!(json_fitness(bytes), Err(why), "{bytes:02x?}");
            assert_eq!(classify(bytes), PayloadEncoding::Binary);
        }
        assert_eq!(
            json_fitness(nested(MAX_JSON_DEPTH + 1).as_bytes()),
            Err(Unfit::TooDeep)
        );
    }
}
