"""TCP as the kernel sees it: socket options (``options``), the kernel's counters
(``info``), connecting with options (``connect``), and the names of errors and addresses."""
