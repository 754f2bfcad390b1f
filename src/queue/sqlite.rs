//! The SQLite store (placeholder).
