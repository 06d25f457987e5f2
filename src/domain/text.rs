//! Repeating a caller's input in an error message, safely.
//!
//! Messages and error details travel back in gRPC trailers, which clients cap (often at 8 or 16
//! KiB): an error that echoed an 8 KB id whole would fail as RESOURCE_EXHAUSTED on the client
//! instead of saying what was wrong. So input is echoed quoted, with control characters escaped,
//! and cut short.

use std::borrow::Cow;

/// The most characters of one input an error message repeats.
pub(crate) const ECHO_MAX_CHARS: usize = 64;

/// `text` cut to `max` characters, marked with `…` when cut.
pub(crate) fn excerpt(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// `text` as an error message repeats it: quoted and escaped, at most [`ECHO_MAX_CHARS`]
/// characters, with the full length named when cut.
pub(crate) fn echo(text: &str) -> String {
    let chars = text.chars().count();
    if chars <= ECHO_MAX_CHARS {
        format!("{text:?}")
    } else {
        format!("{:?} ({chars} characters)", excerpt(text, ECHO_MAX_CHARS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(echo("abc"), "\"abc\"");
        assert_eq!(echo("a\u{1b}b"), "\"a\\u{1b}b\"");
    }

    #[test]
    fn long_input_is_cut_and_its_length_named() {
        let long = "é".repeat(8_000);
        let echoed = echo(&long);
        assert!(echoed.chars().count() < 100, "{echoed}");
        assert!(echoed.ends_with("…\" (8000 characters)"), "{echoed}");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("abc", 3), "abc");
    }
}
