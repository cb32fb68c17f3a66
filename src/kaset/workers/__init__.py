"""Model workers: `kaset worker` processes serving a few models, and the gateway side that
forwards requests to them (discovery, load balancing, retries). See docs/workers.md."""
