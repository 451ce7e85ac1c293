"""Router service: ordered provider candidates for each request."""
