//! The page's files, compiled into the component: what ships is exactly
//! what was built, and serving needs no file-system grant.

/// One file of the page.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../static/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/index.html", "index.html", HTML),
    asset!("/style.css", "style.css", CSS),
    asset!("/js/main.js", "js/main.js", JS),
    asset!("/js/api.js", "js/api.js", JS),
    asset!("/js/errors.js", "js/errors.js", JS),
    asset!("/js/session.js", "js/session.js", JS),
    asset!("/js/auth.js", "js/auth.js", JS),
    asset!("/js/upload.js", "js/upload.js", JS),
    asset!("/js/jobs.js", "js/jobs.js", JS),
    asset!("/js/format.js", "js/format.js", JS),
];

/// The file served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_with_their_types() {
        assert_eq!(find("/").map(|a| a.content_type), Some(HTML));
        assert_eq!(find("/style.css").map(|a| a.content_type), Some(CSS));
        assert_eq!(find("/js/main.js").map(|a| a.content_type), Some(JS));
        assert!(find("/nope").is_none());
        assert!(find("/js/").is_none());
    }

    /// Every script and stylesheet the HTML and the modules name is served.
    #[test]
    fn every_referenced_file_is_served() {
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            let refs = text
                .split(['"', '\''])
                .filter(|s| s.ends_with(".js") || s.ends_with(".css"));
            for reference in refs {
                let path = match reference.strip_prefix("./") {
                    Some(rest) => format!("/js/{rest}"),
                    None => reference.to_owned(),
                };
                assert!(
                    find(&path).is_some(),
                    "{} names {reference}, which is not served",
                    asset.path
                );
            }
        }
    }

    /// No inline script or handler: the CSP would block it anyway.
    #[test]
    fn the_page_has_no_inline_script() {
        let html = std::str::from_utf8(find("/").expect("served").body).expect("UTF-8");
        for tag in html.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap_or_default();
            assert!(open.contains("src="), "inline script: <script{open}>");
            assert!(
                tag.split('>')
                    .nth(1)
                    .is_some_and(|t| t.starts_with("</script"))
            );
        }
        let handler = html.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handler, None, "an inline event handler attribute");
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            assert!(!text.contains("innerHTML"), "{} uses innerHTML", asset.path);
            assert!(
                !text.contains("localStorage"),
                "{} uses localStorage",
                asset.path
            );
        }
    }
}
