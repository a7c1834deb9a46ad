//! The query parameters the gateway reads: each is given at most once, and
//! blob ids are checked before they reach the store.

/// `key`'s value in `query` (`key=value` pairs joined by `&`, taken as
/// sent), `None` when absent.
pub fn single<'q>(query: Option<&'q str>, key: &str) -> Result<Option<&'q str>, Repeated> {
    let mut values = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix(key)?.strip_prefix('='));
    let value = values.next();
    if values.next().is_some() {
        return Err(Repeated);
    }
    Ok(value)
}

/// A parameter given more than once.
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated;

/// Whether `value` is a blob id as the store issues them: 24 hex digits.
pub fn is_blob_id(value: &str) -> bool {
    value.len() == 24 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_read_once_by_its_exact_name() {
        assert_eq!(single(Some("a=1&limit=5"), "limit"), Ok(Some("5")));
        assert_eq!(single(Some("limitx=5&limit"), "limit"), Ok(None));
        assert_eq!(single(None, "limit"), Ok(None));
        assert_eq!(single(Some("limit=&limit=2"), "limit"), Err(Repeated));
    }

    #[test]
    fn blob_ids_are_24_hex_digits() {
        assert!(is_blob_id("65F0A1B2C3D4E5F6A7B8C9D0"));
        assert!(!is_blob_id("65f0a1b2c3d4e5f6a7b8c9d"));
        assert!(!is_blob_id("65f0a1b2c3d4e5f6a7b8c9dg"));
    }
}
