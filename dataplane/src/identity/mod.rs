//! Identity: OIDC JWT verification against JWKS, claims to identity, local issuer.
