//! Statistics registry (VirtualBox STAM): counters, gauges, profiles with hierarchical names.
