//! The OpenAPI 3 document of the API, served at `/openapi.json`. It is
//! written by hand (`openapi.json` beside this file); the test below keeps
//! it and the route table (`routes::ROUTES`) in step, both ways.

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::http::routes::ROUTES;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

    #[test]
    fn the_document_lists_exactly_the_routes_that_exist() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("path item");
                item.keys()
                    .filter(|k| METHODS.contains(&k.as_str()))
                    .map(|m| (m.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.verb.as_str().to_string(), r.path.to_string()))
            .collect();
        assert_eq!(routed.len(), ROUTES.len());
        assert_eq!(
            documented, routed,
            "openapi.json and routes::ROUTES disagree"
        );
    }

    #[test]
    fn routes_without_authentication_say_so_in_the_document() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.verb.as_str().to_lowercase()];
            let open = op.get("security") == Some(&serde_json::json!([]));
            assert_eq!(open, !route.auth, "{} {}", route.verb.as_str(), route.path);
        }
    }
}
