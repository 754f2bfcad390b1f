//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the folder at
//! compile time, and cargo does not see a new file there by itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
