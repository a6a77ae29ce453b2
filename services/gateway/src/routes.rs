//! The routing table, learned from discovery.
//!
//! Every endpoint whose `$SRV.INFO` metadata carries `http_method` and
//! `http_path` becomes a route. Path templates like `/orders/{id}/cancel`
//! match segment by segment; `{name}` segments fill the request field of
//! the same name.

use std::collections::BTreeMap;

use switchboard::discovery::InstanceInfo;
use switchboard::service::{
    DESCRIPTION, HTTP_METHOD, HTTP_PATH, HTTP_STATUS, REQUEST_SCHEMA, RESPONSE_SCHEMA,
};

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: String,
    /// The path template, e.g. `/orders/{id}`.
    pub path: String,
    /// NATS subject of the endpoint.
    pub subject: String,
    /// Service name.
    pub service: String,
    /// Success status (200 unless declared).
    pub status: u16,
    /// Endpoint description.
    pub description: String,
    /// JSON Schema of the request, if published.
    pub request_schema: Option<serde_json::Value>,
    /// JSON Schema of the response, if published.
    pub response_schema: Option<serde_json::Value>,
}

/// All routes, most specific first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from every instance's INFO answer.
    pub fn from_discovery(instances: &[InstanceInfo]) -> Self {
        let mut by_key: BTreeMap<(String, String), Route> = BTreeMap::new();
        for instance in instances {
            for endpoint in &instance.endpoints {
                let Some(metadata) = &endpoint.metadata else {
                    continue;
                };
                let (Some(method), Some(path)) =
                    (metadata.get(HTTP_METHOD), metadata.get(HTTP_PATH))
                else {
                    continue;
                };
                let schema =
                    |key: &str| metadata.get(key).and_then(|s| serde_json::from_str(s).ok());
                by_key.insert(
                    (path.clone(), method.to_uppercase()),
                    Route {
                        method: method.to_uppercase(),
                        path: path.clone(),
                        subject: endpoint.subject.clone(),
                        service: instance.name.clone(),
                        status: metadata
                            .get(HTTP_STATUS)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(200),
                        description: metadata.get(DESCRIPTION).cloned().unwrap_or_default(),
                        request_schema: schema(REQUEST_SCHEMA),
                        response_schema: schema(RESPONSE_SCHEMA),
                    },
                );
            }
        }
        RouteTable::sorted(by_key.into_values().collect())
    }

    /// This table plus the routes of `previous` whose service is absent
    /// now: a service that is down keeps its routes (they answer 503 until
    /// it is back), while a service that is up is authoritative for its own.
    /// The routes whose subject `may_call` allows, and the subjects of
    /// those it does not.
    pub fn callable_only(self, may_call: impl Fn(&str) -> bool) -> (Self, Vec<String>) {
        let (kept, refused): (Vec<Route>, Vec<Route>) =
            self.routes.into_iter().partition(|r| may_call(&r.subject));
        (
            RouteTable::sorted(kept),
            refused.into_iter().map(|r| r.subject).collect(),
        )
    }

    pub fn keeping_absent_services(mut self, previous: &RouteTable) -> Self {
        let present: std::collections::BTreeSet<String> =
            self.routes.iter().map(|r| r.service.clone()).collect();
        let kept: Vec<Route> = previous
            .routes
            .iter()
            .filter(|r| !present.contains(&r.service))
            .cloned()
            .collect();
        if kept.is_empty() {
            return self;
        }
        let mut all = std::mem::take(&mut self.routes);
        all.extend(kept);
        RouteTable::sorted(all)
    }

    fn sorted(mut routes: Vec<Route>) -> Self {
        // Literal segments beat parameters: `/users/{id}/notifications`
        // is tried before anything shorter or more generic.
        routes.sort_by_key(|r| {
            let params = r.path.split('/').filter(|s| s.starts_with('{')).count();
            (
                std::cmp::Reverse(r.path.split('/').count()),
                params,
                r.path.clone(),
            )
        });
        routes.dedup_by(|a, b| a.path == b.path && a.method == b.method);
        RouteTable { routes }
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and `path`, with its path parameters; or,
    /// when only the method differs, the allowed methods (for a 405).
    pub fn find(&self, method: &str, path: &str) -> Lookup<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(params) = match_path(&route.path, path) {
                if route.method == method {
                    return Lookup::Found(route, params);
                }
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

/// Result of [`RouteTable::find`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A route and its path parameters.
    Found(&'a Route, BTreeMap<String, String>),
    /// The path exists with other methods.
    MethodNotAllowed(Vec<String>),
    /// No such path.
    NotFound,
}

fn match_path(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let template: Vec<&str> = template.trim_matches('/').split('/').collect();
    let actual: Vec<&str> = path.trim_matches('/').split('/').collect();
    if template.len() != actual.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    for (t, a) in template.iter().zip(&actual) {
        match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) if !a.is_empty() => {
                params.insert(name.to_owned(), percent_decode(a)?);
            }
            Some(_) => return None,
            None if t == a => {}
            None => return None,
        }
    }
    Some(params)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(service: &str, method: &str, path: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
            subject: format!("{service}.x"),
            service: service.into(),
            status: 200,
            description: String::new(),
            request_schema: None,
            response_schema: None,
        }
    }

    #[test]
    fn a_service_that_is_down_keeps_its_routes_and_one_that_is_up_is_authoritative() {
        let before = RouteTable::sorted(vec![
            route("users", "GET", "/users/{id}"),
            route("orders", "GET", "/orders/{id}"),
            route("orders", "POST", "/orders/old"),
        ]);
        // Discovery now sees orders (without the old endpoint) but not users.
        let now = RouteTable::sorted(vec![route("orders", "GET", "/orders/{id}")]);
        let merged = now.keeping_absent_services(&before);
        let paths: Vec<&str> = merged.routes().iter().map(|r| r.path.as_str()).collect();
        assert!(
            paths.contains(&"/users/{id}"),
            "users is down: its route stays (503)"
        );
        assert!(
            !paths.contains(&"/orders/old"),
            "orders is up: its current endpoints rule"
        );
        assert_eq!(merged.routes().len(), 2);
    }

    #[test]
    fn literal_segments_win_over_parameters() {
        let table = RouteTable::sorted(vec![
            route("users", "GET", "/users/{id}"),
            route("notifications", "GET", "/users/{user_id}/notifications"),
            route("users", "GET", "/users/me"),
        ]);
        match table.find("GET", "/users/me") {
            Lookup::Found(r, _) => assert_eq!(r.path, "/users/me"),
            other => panic!("{other:?}"),
        }
        match table.find("GET", "/users/u-1/notifications") {
            Lookup::Found(r, params) => {
                assert_eq!(r.service, "notifications");
                assert_eq!(params.get("user_id").map(String::as_str), Some("u-1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn templates_match_segment_by_segment() {
        let p = match_path("/orders/{id}/cancel", "/orders/o-1/cancel");
        assert_eq!(p.and_then(|p| p.get("id").cloned()).as_deref(), Some("o-1"));
        assert!(match_path("/orders/{id}", "/orders/o-1/cancel").is_none());
        assert!(match_path("/orders/{id}", "/orders/").is_none());
        let p = match_path("/inventory/{sku}", "/inventory/red%20mug");
        assert_eq!(
            p.and_then(|p| p.get("sku").cloned()).as_deref(),
            Some("red mug")
        );
        assert!(match_path("/inventory/{sku}", "/inventory/%zz").is_none());
    }
}
