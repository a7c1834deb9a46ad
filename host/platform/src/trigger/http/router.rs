//! Route matching for `[[trigger.http]]`: exact routes win over wildcards,
//! and among wildcards the longest prefix wins, as in Spin.

use crate::manifest::{HttpRoute, RoutePattern};

/// A matched route: which component, and the part of the path below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub component: &'a str,
    pub pattern: &'a RoutePattern,
    /// The route as written, e.g. `/api/...`.
    pub raw: String,
    /// The matched prefix without the wildcard, e.g. `/api`.
    pub base: &'a str,
    /// The rest of the path after `base` (empty for exact routes).
    pub path_info: String,
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<HttpRoute>,
}

impl Router {
    pub fn new(routes: &[HttpRoute]) -> Self {
        let mut routes: Vec<HttpRoute> = routes
            .iter()
            .filter(|r| r.route != RoutePattern::Private)
            .cloned()
            .collect();
        // Exact routes first, then wildcards from the longest prefix down.
        routes.sort_by_key(|r| match &r.route {
            RoutePattern::Exact(_) => (0, 0),
            RoutePattern::Wildcard(p) => (1, usize::MAX - p.len()),
            RoutePattern::Private => (2, 0),
        });
        Router { routes }
    }

    pub fn routes(&self) -> &[HttpRoute] {
        &self.routes
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let trimmed = match path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        self.routes.iter().find_map(|r| match &r.route {
            RoutePattern::Exact(p) if p == trimmed => Some(RouteMatch {
                component: &r.component,
                pattern: &r.route,
                raw: p.clone(),
                base: p,
                path_info: String::new(),
            }),
            RoutePattern::Wildcard(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(|| RouteMatch {
                    component: &r.component,
                    pattern: &r.route,
                    raw: r.route.to_string(),
                    base: prefix,
                    path_info: rest.to_string(),
                })
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(component: &str, pattern: RoutePattern) -> HttpRoute {
        HttpRoute {
            component: component.into(),
            route: pattern,
        }
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let r = Router::new(&[
            route("all", RoutePattern::Wildcard(String::new())),
            route("api", RoutePattern::Wildcard("/api".into())),
            route("login", RoutePattern::Exact("/api/login".into())),
            route("hidden", RoutePattern::Private),
        ]);
        assert_eq!(r.route("/api/login").unwrap().component, "login");
        assert_eq!(r.route("/api/login/").unwrap().component, "login");
        let m = r.route("/api/users/1").unwrap();
        assert_eq!((m.component, m.path_info.as_str()), ("api", "/users/1"));
        assert_eq!(r.route("/apiary").unwrap().component, "all");
        assert_eq!(r.route("/").unwrap().component, "all");
    }

    #[test]
    fn unmatched_paths_have_no_route() {
        let r = Router::new(&[route("login", RoutePattern::Exact("/login".into()))]);
        assert!(r.route("/logout").is_none());
        assert!(r.route("/login/x").is_none());
    }
}
