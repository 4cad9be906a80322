//! Resolution of a manifest into a [`Plan`]: the memory model per device tier, the best-fit
//! choice of quantization, and the stage graph. Pure data; nothing heavy is done here.

pub mod model;

pub use model::*;
