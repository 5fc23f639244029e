cfg_if::cfg_if! {
    if #[cfg(feature = "engine")] {
        mod engine;
        pub use engine::*;
    }
}

#[cfg(feature = "transformation")]
pub mod transformation;
