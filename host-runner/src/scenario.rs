//! YAML scenarios.
