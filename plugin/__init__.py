"""telegraf-tcpdrop: the TCP packets the Linux kernel drops, and why."""
