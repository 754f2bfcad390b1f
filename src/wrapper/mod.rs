//! Wrappers: the registry of connection types that run callouts, and the built-in ones.
