//! Dependency graph, semver constraints and load order.
