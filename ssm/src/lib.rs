//! Saved-state format and manager (VirtualBox SSM).
