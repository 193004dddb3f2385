//! Guest paging: modes, page-table walks and translation.
