//! YAML reading: a located tree, `${VAR}` substitution and a serde deserializer over it.

pub(crate) mod de;
pub(crate) mod interpolate;
pub(crate) mod tree;
