//! Ids a client chooses (stream ids, stream keys) that become path segments of URLs, playlist
//! entries and file names: one rule for all of them.

/// The longest id a client may choose.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is 1 to `max` (at most [`MAX_ID_LEN`]) ASCII letters, digits, `-` and `_`:
/// safe as a path segment, a file name and a log field as it is.
pub fn is_plain_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max.min(MAX_ID_LEN)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The longest id of a live AI or BYOC stream (it travels in Livepeer's job headers).
pub const MAX_STREAM_ID_LEN: usize = 64;

/// The id of a new live AI or BYOC stream: the one the client asked for when it is plain (see
/// [`is_plain_id`]), a random one when it asked for none, or why not.
pub fn stream_id_or_new(asked: &str) -> Result<String, String> {
    if asked.is_empty() {
        Ok(format!("{:016x}", rand::random::<u64>()))
    } else if is_plain_id(asked, MAX_STREAM_ID_LEN) {
        Ok(asked.to_owned())
    } else {
        Err(format!(
            "stream_id must be {}",
            plain_id_rule(MAX_STREAM_ID_LEN)
        ))
    }
}

/// What [`is_plain_id`] accepts, for error messages.
pub fn plain_id_rule(max: usize) -> String {
    format!("1 to {} of A-Z, a-z, 0-9, `-`, `_`", max.min(MAX_ID_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_of_the_allowed_length_pass() {
        assert!(is_plain_id("abc-123_X", 64));
        assert!(is_plain_id(&"x".repeat(64), 64));
        assert!(!is_plain_id(&"x".repeat(65), 64));
        assert!(!is_plain_id(&"x".repeat(129), 1000));
        for bad in ["", "a/b", "..", "a b", "é", "a%2F", "a\n"] {
            assert!(!is_plain_id(bad, 64), "{bad:?}");
        }
        assert_eq!(plain_id_rule(64), "1 to 64 of A-Z, a-z, 0-9, `-`, `_`");
    }

    #[test]
    fn a_stream_gets_the_id_it_asked_for_or_a_new_one() {
        assert_eq!(stream_id_or_new("cam-1").as_deref(), Ok("cam-1"));
        let new = stream_id_or_new("").expect("new id");
        assert!(is_plain_id(&new, MAX_STREAM_ID_LEN) && new.len() == 16);
        assert_ne!(stream_id_or_new("").expect("new id"), new);
        let refused = stream_id_or_new("../x").expect_err("refused");
        assert_eq!(
            refused,
            "stream_id must be 1 to 64 of A-Z, a-z, 0-9, `-`, `_`"
        );
        assert!(stream_id_or_new(&"x".repeat(65)).is_err());
    }
}
