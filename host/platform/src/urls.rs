//! URLs shown to people: in logs, errors and `/readyz`.

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; a URL
/// without a password is returned as it is. Works on the text, so URLs the
/// `url` crate does not parse (MongoDB's `host1,host2` seed lists) are
/// redacted too.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_url("mysql://root:secret@127.0.0.1:3306/auth"),
            "mysql://root:***@127.0.0.1:3306/auth"
        );
        assert_eq!(
            redact_url("mysql://127.0.0.1/auth"),
            "mysql://127.0.0.1/auth"
        );
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://u@h/v?x=1"), "amqp://u@h/v?x=1");
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(
            redact_url("mongodb://app:p@ss@db-0:27017,db-1:27017/?replicaSet=rs0"),
            "mongodb://app:***@db-0:27017,db-1:27017/?replicaSet=rs0"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
