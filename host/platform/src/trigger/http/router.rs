//! Route matching for `[[trigger.http]]` with the router Spin itself uses
//! (`routefinder`): exact segments beat `:name` segments, which beat a
//! trailing wildcard, segment by segment, and a longer route beats a
//! shorter one, so precedence is Spin's.

use crate::manifest::{HttpRoute, RoutePattern, RouteTarget, StaticResponse, route_spec};

/// A matched route: what answers, and the `spin-*` header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// The component (for a static response, its trigger's id, which
    /// names it in metrics).
    pub component: &'a str,
    /// Set when the route answers with a static response.
    pub static_response: Option<&'a StaticResponse>,
    /// The route as written, e.g. `/api/...` (`spin-raw-component-route`,
    /// and the route label in metrics and admission).
    pub raw: String,
    /// The route below the base (`spin-matched-route`).
    pub based: String,
    /// The route as written without its wildcard (`spin-component-route`).
    pub component_route: String,
    /// The rest of the path under a wildcard (`spin-path-info`).
    pub path_info: String,
    /// `:name` segments and what they matched (`spin-path-match-NAME`).
    pub captures: Vec<(String, String)>,
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<HttpRoute>,
    finder: routefinder::Router<usize>,
    /// `[application.trigger.http] base` (`spin-base-path`).
    base: String,
}

impl Router {
    /// Routes as the manifest validated them (so every pattern parses).
    pub fn new(routes: &[HttpRoute], base: &str) -> Self {
        let routes: Vec<HttpRoute> = routes
            .iter()
            .filter(|r| r.route != RoutePattern::Private)
            .cloned()
            .collect();
        let mut finder = routefinder::Router::new();
        for (i, r) in routes.iter().enumerate() {
            if let RoutePattern::Path { based, .. } = &r.route
                && let Ok((spec, _)) = route_spec(based)
            {
                let Ok(()) = finder.add(spec, i);
            }
        }
        Router {
            routes,
            finder,
            base: base.to_string(),
        }
    }

    /// The routes, most specific first (the order they are tried in).
    pub fn routes(&self) -> Vec<&HttpRoute> {
        self.finder
            .iter()
            .filter_map(|(_, i)| self.routes.get(*i))
            .collect()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let found = self.finder.best_match(path)?;
        let route = self.routes.get(*found)?;
        let captures = found.captures();
        let RoutePattern::Path { raw, based, .. } = &route.route else {
            return None;
        };
        // Spin keeps a trailing slash in the path below a wildcard.
        let path_info = match captures.wildcard() {
            None => String::new(),
            Some(rest) => match (rest.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".into(),
                (false, false) => format!("/{rest}"),
                (false, true) => format!("/{rest}/"),
            },
        };
        let (component, static_response) = match &route.target {
            RouteTarget::Component(id) => (id.as_str(), None),
            RouteTarget::Static(response) => (route.trigger_id.as_str(), Some(&**response)),
        };
        Some(RouteMatch {
            component,
            static_response,
            raw: raw.clone(),
            based: based.clone(),
            component_route: route.route.raw_prefix().to_string(),
            path_info,
            captures: captures
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn router(base: &str, routes: &[(&str, &str)]) -> Router {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let mut text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[application.trigger.http]\nbase = \"{base}\"\n"
        );
        let mut ids: Vec<&str> = Vec::new();
        for (id, route) in routes {
            text.push_str(&format!(
                "[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{id}\"\n"
            ));
            if !ids.contains(id) {
                ids.push(id);
                text.push_str(&format!("[component.{id}]\nsource = \"a.wasm\"\n"));
            }
        }
        let path = dir.path().join("spin.toml");
        std::fs::write(&path, text).unwrap();
        let m = Manifest::load(&path).unwrap();
        Router::new(&m.http_routes, &m.http_base)
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let r = router(
            "/",
            &[
                ("all", "/..."),
                ("api", "/api/..."),
                ("login", "/api/login"),
            ],
        );
        assert_eq!(r.route("/api/login").unwrap().component, "login");
        assert_eq!(r.route("/api/login/").unwrap().component, "login");
        let m = r.route("/api/users/1").unwrap();
        assert_eq!((m.component, m.path_info.as_str()), ("api", "/users/1"));
        assert_eq!(m.component_route, "/api");
        assert_eq!(r.route("/apiary").unwrap().component, "all");
        assert_eq!(r.route("/").unwrap().component, "all");
        assert_eq!(r.route("/api/x/").unwrap().path_info, "/x/");
    }

    #[test]
    fn named_segments_capture_and_rank_between_exact_and_wildcard() {
        let r = router(
            "/",
            &[
                ("user", "/users/:id"),
                ("me", "/users/me"),
                ("files", "/users/:id/files/..."),
                ("any", "/users/..."),
            ],
        );
        let m = r.route("/users/42").unwrap();
        assert_eq!(m.component, "user");
        assert_eq!(m.captures, [("id".to_string(), "42".to_string())]);
        assert_eq!(r.route("/users/me").unwrap().component, "me");
        let m = r.route("/users/7/files/a/b.txt").unwrap();
        assert_eq!(m.component, "files");
        assert_eq!(m.path_info, "/a/b.txt");
        assert_eq!(m.captures, [("id".to_string(), "7".to_string())]);
        assert_eq!(r.route("/users/7/other").unwrap().component, "any");
    }

    #[test]
    fn base_prefixes_every_route() {
        let r = router("/base", &[("foo", "/foo/...")]);
        let m = r.route("/base/foo/bar").unwrap();
        assert_eq!(m.based, "/base/foo/...");
        assert_eq!(m.raw, "/foo/...");
        assert_eq!(m.component_route, "/foo");
        assert_eq!(m.path_info, "/bar");
        assert!(r.route("/foo/bar").is_none());
        assert_eq!(r.base(), "/base");
    }

    #[test]
    fn unmatched_paths_have_no_route() {
        let r = router("/", &[("login", "/login")]);
        assert!(r.route("/logout").is_none());
        assert!(r.route("/login/x").is_none());
    }
}
