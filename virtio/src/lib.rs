//! Virtio (book chapter 5): the split virtqueue shared by driver and device
//! ([`queue`]), the transport-independent device interface ([`device`]), and
//! the devices built on them ([`block`]).

pub mod balloon;
pub mod block;
pub mod console;
pub mod device;
pub mod net;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;
