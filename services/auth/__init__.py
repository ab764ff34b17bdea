"""Auth service: users (approval, roles), ES256 JWTs with a rotating JWKS, service principals."""
