//! The router: from (host, path, method, headers) to the API that serves it.
//!
//! Precedence, most specific first (documented in `docs/routing.md`):
//! 1. host: an exact host beats a wildcard (longer suffix first), which beats no host;
//! 2. path: an exact path (`=/x`) beats a prefix; among prefixes, more segments
//!    win, and at the first segment where two differ a literal beats a `{param}`;
//! 3. more header conditions beat fewer;
//! 4. a route that lists methods beats one that takes any method;
//! 5. otherwise, the order in the file.
//!
//! A request whose host and path match some route but whose method matches
//! none gets `405 method_not_allowed` with an `Allow` header.
//!
//! Routes are grouped by exact host at compile time, so a lookup scans only
//! the routes that can match the request's host.

use std::cmp::Ordering;
use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate_config::{HostPattern, PathPattern, Segment};

/// One (host, path) combination of an API, compiled.
#[derive(Debug)]
struct Route {
    api: usize,
    host: Option<HostPattern>,
    path: PathPattern,
    methods: MethodSet,
    headers: Vec<(HeaderName, HeaderValue)>,
    order: usize,
}

/// What the router found.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// The index of the API in the snapshot.
    Found {
        api: usize,
    },
    /// Host and path matched, the method did not: the methods that would have.
    MethodNotAllowed {
        allow: MethodSet,
    },
    NotFound,
}

/// A set of methods as a bit mask; empty means any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MethodSet(u16);

const KNOWN_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

impl MethodSet {
    pub fn from_names(names: &[String]) -> MethodSet {
        let mut bits = 0;
        for name in names {
            if let Some(i) = KNOWN_METHODS.iter().position(|m| m.as_str() == name) {
                bits |= 1 << i;
            }
        }
        MethodSet(bits)
    }

    fn any(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, method: &Method) -> bool {
        if self.any() {
            return true;
        }
        match KNOWN_METHODS.iter().position(|m| m == method) {
            Some(i) => self.0 & (1 << i) != 0,
            None => false,
        }
    }

    /// The `Allow` header value.
    pub fn allow_header(self) -> String {
        KNOWN_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Input the router needs from a request.
pub struct RouteRequest<'a> {
    /// Lower-case host without port; empty when the request named none.
    pub host: &'a str,
    /// Normalised path.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// For each exact host, the indexes of the routes that may match it, in precedence order.
    by_host: HashMap<String, Vec<usize>>,
    /// Routes for any other host: wildcards and host-less routes, in precedence order.
    other_hosts: Vec<usize>,
}

/// The match part of one API, as the router takes it.
pub struct RouteSpec<'a> {
    pub api: usize,
    pub hosts: &'a [String],
    pub paths: &'a [String],
    pub methods: &'a [String],
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Router {
    /// Builds the router. Patterns must already be valid (the config validator checked them).
    pub fn new<'a>(specs: impl IntoIterator<Item = RouteSpec<'a>>) -> Router {
        let mut routes = Vec::new();
        for spec in specs {
            let methods = MethodSet::from_names(spec.methods);
            let hosts: Vec<Option<HostPattern>> = if spec.hosts.is_empty() {
                vec![None]
            } else {
                spec.hosts
                    .iter()
                    .filter_map(|h| HostPattern::parse(h).ok())
                    .map(Some)
                    .collect()
            };
            for host in &hosts {
                for path in spec.paths {
                    let Ok(path) = PathPattern::parse(path) else {
                        continue;
                    };
                    let order = routes.len();
                    routes.push(Route {
                        api: spec.api,
                        host: host.clone(),
                        path,
                        methods,
                        headers: spec.headers.clone(),
                        order,
                    });
                }
            }
        }
        let mut sorted: Vec<usize> = (0..routes.len()).collect();
        sorted.sort_by(|&a, &b| precedence(&routes[a], &routes[b]));

        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for route in &routes {
            if let Some(HostPattern::Exact(name)) = &route.host {
                by_host.entry(name.clone()).or_default();
            }
        }
        for (name, list) in by_host.iter_mut() {
            list.extend(sorted.iter().copied().filter(|&i| match &routes[i].host {
                None => true,
                Some(pattern) => pattern.matches(name),
            }));
        }
        let other_hosts = sorted
            .iter()
            .copied()
            .filter(|&i| !matches!(routes[i].host, Some(HostPattern::Exact(_))))
            .collect();
        Router {
            routes,
            by_host,
            other_hosts,
        }
    }

    pub fn lookup(&self, request: &RouteRequest<'_>) -> RouteMatch {
        let (candidates, host_checked) = match self.by_host.get(request.host) {
            Some(list) => (list.as_slice(), true),
            None => (self.other_hosts.as_slice(), false),
        };
        let mut allow = MethodSet(0);
        let mut path_matched = false;
        for &index in candidates {
            let route = &self.routes[index];
            if !host_checked {
                if let Some(pattern) = &route.host {
                    if !pattern.matches(request.host) {
                        continue;
                    }
                }
            }
            if !route.path.matches(request.path) {
                continue;
            }
            if !route
                .headers
                .iter()
                .all(|(name, value)| request.headers.get(name) == Some(value))
            {
                continue;
            }
            if route.methods.contains(request.method) {
                return RouteMatch::Found { api: route.api };
            }
            path_matched = true;
            allow.0 |= route.methods.0;
        }
        if path_matched {
            RouteMatch::MethodNotAllowed { allow }
        } else {
            RouteMatch::NotFound
        }
    }
}

/// Orders two routes, the more specific first.
fn precedence(a: &Route, b: &Route) -> Ordering {
    host_rank(&b.host)
        .cmp(&host_rank(&a.host))
        .then_with(|| path_order(&a.path, &b.path))
        .then_with(|| b.headers.len().cmp(&a.headers.len()))
        .then_with(|| a.methods.any().cmp(&b.methods.any()))
        .then_with(|| a.order.cmp(&b.order))
}

fn host_rank(host: &Option<HostPattern>) -> (u8, usize) {
    match host {
        Some(HostPattern::Exact(_)) => (2, 0),
        Some(HostPattern::Wildcard(suffix)) => (1, suffix.len()),
        None => (0, 0),
    }
}

fn path_order(a: &PathPattern, b: &PathPattern) -> Ordering {
    match (a, b) {
        (PathPattern::Exact(x), PathPattern::Exact(y)) => y.len().cmp(&x.len()),
        (PathPattern::Exact(_), PathPattern::Prefix(_)) => Ordering::Less,
        (PathPattern::Prefix(_), PathPattern::Exact(_)) => Ordering::Greater,
        (PathPattern::Prefix(x), PathPattern::Prefix(y)) => y.len().cmp(&x.len()).then_with(|| {
            for (sx, sy) in x.iter().zip(y) {
                match (sx, sy) {
                    (Segment::Literal(_), Segment::Param(_)) => return Ordering::Less,
                    (Segment::Param(_), Segment::Literal(_)) => return Ordering::Greater,
                    _ => {}
                }
            }
            Ordering::Equal
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        api: usize,
        hosts: &'a [String],
        paths: &'a [String],
        methods: &'a [String],
    ) -> RouteSpec<'a> {
        RouteSpec {
            api,
            hosts,
            paths,
            methods,
            headers: vec![],
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn find(router: &Router, host: &str, method: Method, path: &str) -> RouteMatch {
        router.lookup(&RouteRequest {
            host,
            path,
            method: &method,
            headers: &HeaderMap::new(),
        })
    }

    #[test]
    fn most_specific_path_wins_whatever_the_order() {
        let none: Vec<String> = vec![];
        let p0 = strings(&["/"]);
        let p1 = strings(&["/orders"]);
        let p2 = strings(&["/orders/{id}"]);
        let p3 = strings(&["/orders/special"]);
        let p4 = strings(&["=/orders"]);
        let router = Router::new([
            spec(0, &none, &p0, &none),
            spec(1, &none, &p1, &none),
            spec(2, &none, &p2, &none),
            spec(3, &none, &p3, &none),
            spec(4, &none, &p4, &none),
        ]);
        assert_eq!(
            find(&router, "", Method::GET, "/orders"),
            RouteMatch::Found { api: 4 }
        );
        assert_eq!(
            find(&router, "", Method::GET, "/orders/42"),
            RouteMatch::Found { api: 2 }
        );
        assert_eq!(
            find(&router, "", Method::GET, "/orders/special"),
            RouteMatch::Found { api: 3 }
        );
        assert_eq!(
            find(&router, "", Method::GET, "/orders/special/x"),
            RouteMatch::Found { api: 3 }
        );
        assert_eq!(
            find(&router, "", Method::GET, "/ordersx"),
            RouteMatch::Found { api: 0 }
        );
    }

    #[test]
    fn hosts_rank_exact_then_wildcard_then_any() {
        let none: Vec<String> = vec![];
        let p = strings(&["/"]);
        let exact = strings(&["api.example.org"]);
        let wild = strings(&["*.example.org"]);
        let router = Router::new([
            spec(0, &none, &p, &none),
            spec(1, &wild, &p, &none),
            spec(2, &exact, &p, &none),
        ]);
        assert_eq!(
            find(&router, "api.example.org", Method::GET, "/"),
            RouteMatch::Found { api: 2 }
        );
        assert_eq!(
            find(&router, "x.example.org", Method::GET, "/"),
            RouteMatch::Found { api: 1 }
        );
        assert_eq!(
            find(&router, "example.org", Method::GET, "/"),
            RouteMatch::Found { api: 0 }
        );
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let none: Vec<String> = vec![];
        let p = strings(&["/orders"]);
        let m = strings(&["GET", "POST"]);
        let router = Router::new([spec(0, &none, &p, &m)]);
        match find(&router, "", Method::DELETE, "/orders/1") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow.allow_header(), "GET, POST"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            find(&router, "", Method::GET, "/other"),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn a_method_specific_route_beats_a_catch_all_of_the_same_path() {
        let none: Vec<String> = vec![];
        let p = strings(&["/orders"]);
        let post = strings(&["POST"]);
        let router = Router::new([spec(0, &none, &p, &none), spec(1, &none, &p, &post)]);
        assert_eq!(
            find(&router, "", Method::POST, "/orders"),
            RouteMatch::Found { api: 1 }
        );
        assert_eq!(
            find(&router, "", Method::GET, "/orders"),
            RouteMatch::Found { api: 0 }
        );
    }

    #[test]
    fn header_conditions() {
        let none: Vec<String> = vec![];
        let p = strings(&["/"]);
        let mut with_header = spec(1, &none, &p, &none);
        with_header.headers = vec![(
            HeaderName::from_static("x-version"),
            HeaderValue::from_static("2"),
        )];
        let router = Router::new([spec(0, &none, &p, &none), with_header]);
        let mut headers = HeaderMap::new();
        headers.insert("x-version", HeaderValue::from_static("2"));
        let request = RouteRequest {
            host: "",
            path: "/a",
            method: &Method::GET,
            headers: &headers,
        };
        assert_eq!(router.lookup(&request), RouteMatch::Found { api: 1 });
        assert_eq!(
            find(&router, "", Method::GET, "/a"),
            RouteMatch::Found { api: 0 }
        );
    }

    #[test]
    fn a_version_header_api_beats_the_headerless_one_on_its_path_in_any_order() {
        let none: Vec<String> = vec![];
        let p = strings(&["/orders"]);
        let get = strings(&["GET"]);
        let version = |api: usize, value: &'static str| {
            let mut spec = spec(api, &none, &p, &none);
            spec.headers = vec![(
                HeaderName::from_static("x-api-version"),
                HeaderValue::from_static(value),
            )];
            spec
        };
        // The header-less API lists methods, which ranks below a header condition.
        let orders = [
            vec![spec(0, &none, &p, &get), version(2, "2"), version(3, "3")],
            vec![version(3, "3"), version(2, "2"), spec(0, &none, &p, &get)],
        ];
        for specs in orders {
            let router = Router::new(specs);
            for (value, api) in [(Some("2"), 2), (Some("3"), 3), (Some("4"), 0), (None, 0)] {
                let mut headers = HeaderMap::new();
                if let Some(value) = value {
                    headers.insert("x-api-version", HeaderValue::from_static(value));
                }
                let request = RouteRequest {
                    host: "",
                    path: "/orders/1",
                    method: &Method::GET,
                    headers: &headers,
                };
                assert_eq!(
                    router.lookup(&request),
                    RouteMatch::Found { api },
                    "{value:?}"
                );
            }
        }
    }
}
