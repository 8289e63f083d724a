//! `scope` and `on_store_failure` on every limit: their defaults, and a
//! failure mode on a `node` limit reported at its field.

use tollgate_config::{from_yaml, LimitScope, OnStoreFailure};

#[test]
fn limits_are_cluster_wide_and_fall_back_locally_by_default() {
    let config = from_yaml(
        "policies:\n  rate_limit:\n    - { limit: 5, window: 1m }\n    - { limit: 9, window: 1s, scope: node }\n    - { limit: 7, window: 1m, on_store_failure: deny }\n  quota: { limit: 5, period: day, on_store_failure: allow }\n",
    )
    .unwrap();
    let limits = config.policies.rate_limit.as_ref().unwrap();
    assert_eq!(limits[0].scope, LimitScope::Cluster);
    assert_eq!(limits[0].on_store_failure, None);
    assert_eq!(limits[1].scope, LimitScope::Node);
    assert_eq!(limits[2].on_store_failure, Some(OnStoreFailure::Deny));
    let quota = config.policies.quota.as_ref().unwrap();
    assert_eq!(quota.on_store_failure, Some(OnStoreFailure::Allow));
    // Defaults are not written back out.
    let yaml = serde_yaml::to_string(&limits[0]).unwrap();
    assert!(
        !yaml.contains("scope") && !yaml.contains("on_store_failure"),
        "{yaml}"
    );
}

#[test]
fn a_failure_mode_on_a_node_limit_is_refused_at_its_field() {
    let errors: Vec<String> = from_yaml(
        "policies:\n  rate_limit: [{ limit: 5, window: 1m, scope: node, on_store_failure: deny }]\n  quota: { limit: 5, period: day, scope: node, on_store_failure: local }\n",
    )
    .unwrap_err()
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("policies.rate_limit[0].on_store_failure: `on_store_failure: deny` applies to `scope: cluster` limits only"), "{errors:?}");
    assert!(
        errors[1].starts_with("policies.quota.on_store_failure:"),
        "{errors:?}"
    );
    let unknown =
        from_yaml("policies:\n  quota: { limit: 5, period: day, on_store_failure: maybe }\n");
    assert!(unknown.is_err());
}

#[test]
fn sync_interval_is_read_and_refused_where_it_cannot_apply() {
    let config =
        from_yaml("policies:\n  rate_limit: [{ limit: 500, window: 1s, sync_interval: 50ms }]\n")
            .unwrap();
    let limit = &config.policies.rate_limit.as_ref().unwrap()[0];
    assert_eq!(
        limit.sync_interval.map(|d| d.get()),
        Some(std::time::Duration::from_millis(50))
    );
    let errors: Vec<String> = from_yaml(
        "policies:\n  rate_limit:\n    - { limit: 5, window: 1m, scope: node, sync_interval: 100ms }\n    - { limit: 5, window: 1m, sync_interval: 1ms }\n    - { limit: 5, window: 1s, sync_interval: 2s }\n",
    )
    .unwrap_err()
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "policies.rate_limit[0].sync_interval: applies to `scope: cluster` limits only"
        ),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("policies.rate_limit[1].sync_interval: must be at least 10ms"),
        "{errors:?}"
    );
    assert!(
        errors[2]
            .starts_with("policies.rate_limit[2].sync_interval: must be shorter than the window"),
        "{errors:?}"
    );
}
