//! The state store's tests: one binary, a module per subject.

mod postgres;
mod store;
