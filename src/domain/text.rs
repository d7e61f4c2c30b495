//! Text as both databases can store it. PostgreSQL refuses the NUL character in `text`
//! (`invalid byte sequence for encoding "UTF8": 0x00`) and its escape in `jsonb`
//! (`unsupported Unicode escape sequence`); SQLite takes both. A Clerk event may carry one
//! in any field its user controls (a name, the browser's user agent), so every text that
//! comes from a payload has each NUL replaced by U+FFFD (the replacement character) before
//! it is stored, on both backends alike: the user is created and the rest of the text is
//! kept.

use std::borrow::Cow;

use serde_json::Value;

/// What a NUL becomes.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` with every NUL replaced; borrowed when it has none.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', &NUL_REPLACEMENT.to_string()))
    } else {
        Cow::Borrowed(text)
    }
}

/// An owned `text` with every NUL replaced.
pub fn storable_owned(text: String) -> String {
    match storable(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clean) => clean,
    }
}

/// JSON text (already parsed once, so valid) with every NUL in its strings and keys
/// replaced; borrowed, byte for byte, when it has none. JSON can hold a NUL only as the
/// escape `\u0000`, so text without that escape is returned as it is.
pub fn storable_json(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") {
        return Cow::Borrowed(json);
    }
    let Ok(mut value) = serde_json::from_str::<Value>(json) else {
        return Cow::Borrowed(json);
    };
    if !replace_nul(&mut value) {
        // `\\u0000`: an escaped backslash followed by `u0000`, not a NUL.
        return Cow::Borrowed(json);
    }
    Cow::Owned(value.to_string())
}

/// Replace NULs in every string and key of `value`; whether there was one.
fn replace_nul(value: &mut Value) -> bool {
    match value {
        Value::String(s) if s.contains('\0') => {
            *s = storable(s).into_owned();
            true
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, v| replace_nul(v) | found),
        Value::Object(map) => {
            let mut found = false;
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                for (k, v) in entries {
                    map.insert(storable_owned(k), v);
                }
                found = true;
            }
            map.values_mut()
                .fold(found, |found, v| replace_nul(v) | found)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_nul_is_borrowed_and_nul_becomes_the_replacement_character() {
        assert!(matches!(storable("Ada"), Cow::Borrowed("Ada")));
        assert_eq!(storable("A\0d\0a"), "A\u{FFFD}d\u{FFFD}a");
        assert_eq!(storable_owned("\0".into()), "\u{FFFD}");
    }

    #[test]
    fn json_keeps_its_bytes_unless_it_holds_a_nul() {
        let plain = r#"{"a": "b",  "c": [1, 2]}"#;
        assert!(matches!(storable_json(plain), Cow::Borrowed(s) if s == plain));
        let escaped_backslash = r#"{"a":"\\u0000"}"#;
        assert!(matches!(storable_json(escaped_backslash), Cow::Borrowed(_)));
        let nul = r#"{"data":{"first_name":"A\u0000","x\u0000":[{"ua":"\u0000"}]}}"#;
        let clean: Value = serde_json::from_str(&storable_json(nul)).unwrap();
        assert_eq!(
            clean,
            serde_json::json!({"data": {"first_name": "A\u{FFFD}", "x\u{FFFD}": [{"ua": "\u{FFFD}"}]}})
        );
        assert!(!storable_json(nul).contains("\\u0000"));
    }
}
