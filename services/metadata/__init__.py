"""The metadata service: repositories, tags, manifests, blob links and referrers over Redis."""
