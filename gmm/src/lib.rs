//! Global memory manager (VirtualBox GMM): host memory chunks for guests.
