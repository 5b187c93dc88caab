//! Channel and namespace names (docs/PROTOCOL.md, "Channels").

use super::Refusal;
use crate::node::NodeInner;
use crate::protocol::ErrorCode;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Checks a channel name: 1 to 255 bytes of `A-Z a-z 0-9 _ - . : @ / =`.
pub fn validate(channel: &str) -> Result<(), String> {
    if channel.is_empty() {
        return Err("channel name is empty".into());
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "channel name is {} bytes; the limit is {MAX_CHANNEL_LEN}",
            channel.len()
        ));
    }
    if let Some(bad) = channel.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "channel name contains {bad:?}; allowed are A-Z a-z 0-9 and _ - . : @ / ="
        ));
    }
    Ok(())
}

/// The namespace of a channel: the part before the first `:` ("" when none).
pub fn namespace(channel: &str) -> &str {
    channel.split_once(':').map(|(ns, _)| ns).unwrap_or("")
}

/// Checks a namespace name, as configured: a channel name without `:`.
pub fn validate_namespace(name: &str) -> Result<(), String> {
    if name.contains(':') {
        return Err("a namespace name uses the channel alphabet without ':'".into());
    }
    validate(name).map_err(|_| "a namespace name uses the channel alphabet without ':'".into())
}

/// Checks a channel name: the protocol's rule ([`validate`]), then the
/// node's `--max-channel-length` (counted when it bites).
pub(crate) fn check(node: &NodeInner, channel: &str) -> Result<(), Refusal> {
    validate(channel).map_err(|why| Refusal::new(ErrorCode::BadRequest, why))?;
    check_length(node, channel)
}

/// Checks a (syntactically valid) channel name against `--max-channel-length`,
/// counting a rejection.
pub(crate) fn check_length(node: &NodeInner, channel: &str) -> Result<(), Refusal> {
    let max = node.config.limits.max_channel_length;
    if channel.len() > max {
        node.gate.rejections.channel_length.increment(1);
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "channel name is {} bytes; the limit is {max}",
                channel.len()
            ),
        ));
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '/' | '=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(validate("chat:lobby").is_ok());
        assert!(validate("a_b-c.d:e@f/g=h09AZ").is_ok());
        assert!(validate(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert!(validate("").is_err());
        assert!(validate(&"x".repeat(256)).is_err());
        for bad in ["a b", "a#b", "a{b}", "é", "a\"b", "a\\b", "a\nb", "a*"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespace_names_are_channel_names_without_colons() {
        assert!(validate_namespace("chat").is_ok());
        for bad in ["", "a:b", "a b", &"x".repeat(256)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(namespace("chat:room:1"), "chat");
        assert_eq!(namespace("news"), "");
    }
}
