//! The library half of the `vmm` command: its control API server, shared
//! by the binary and by the fuzz targets in `vmm-cli/fuzz`.

pub mod api;
