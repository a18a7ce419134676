"""Every statement on the rollup tables and the spend read over them."""
