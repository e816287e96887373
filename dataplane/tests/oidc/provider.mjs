// A real OpenID provider (the certified `oidc-provider` package) on loopback, for the identity
// interop tests. Usage: node provider.mjs PORT KID ALG   (ALG: RS256 | PS256 | ES256 | EdDSA)
//
// It has one client-credentials client and one resource server whose access tokens are JWTs
// signed with a fresh key named KID. Restarting it with another KID on the same port is how the
// tests rotate the provider's keys. Prints `ready <issuer>` on stdout once listening.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, kid, alg] = process.argv.slice(2);
if (!port || !kid || !alg) {
  console.error('usage: node provider.mjs PORT KID ALG');
  process.exit(2);
}

const keyFor = {
  RS256: () => generateKeyPairSync('rsa', { modulusLength: 2048 }),
  PS256: () => generateKeyPairSync('rsa', { modulusLength: 2048 }),
  ES256: () => generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  EdDSA: () => generateKeyPairSync('ed25519'),
}[alg];
if (!keyFor) {
  console.error(`unsupported alg ${alg}`);
  process.exit(2);
}
const jwk = { ...keyFor().privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'portcullis-agent',
      client_secret: 'agent-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      // Client metadata is validated against the provider's keys: name the alg it has.
      id_token_signed_response_alg: alg,
    },
  ],
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:portcullis:gateway',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'db',
        audience: 'portcullis',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg } },
      }),
    },
  },
});

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
