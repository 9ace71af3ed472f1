// A real OpenID Connect provider for agentgate's identity tests (panva/oidc-provider), on 127.0.0.1.
// Client-credentials grant, JWT access tokens (RFC 9068) with a groups claim, DPoP, introspection,
// and an opaque-token resource. Keys come from OIDC_JWKS (a private JWKS file); if the file does not
// exist a fresh RSA key is generated into it, so a test rotates keys by deleting it and restarting.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
const jwksPath = process.env.OIDC_JWKS;
if (!port || !jwksPath) {
  console.error('PORT and OIDC_JWKS are required');
  process.exit(2);
}

if (!existsSync(jwksPath)) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `rsa-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
  writeFileSync(jwksPath, JSON.stringify({ keys: [jwk] }));
}
const jwks = JSON.parse(readFileSync(jwksPath, 'utf8'));
// Public keys of the gateway's private_key_jwt client, when the test provides them.
const gatewayClientJwks = process.env.GATEWAY_CLIENT_JWKS ? JSON.parse(readFileSync(process.env.GATEWAY_CLIENT_JWKS, 'utf8')) : null;

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'ci-agent',
      client_secret: 'ci-agent-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'other-agent',
      client_secret: 'other-agent-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // The gateway's own client, used for introspection.
      client_id: 'agentgate',
      client_secret: 'agentgate-introspection-secret',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    ...(gatewayClientJwks
      ? [{
          // The gateway authenticating with a signed client assertion (RFC 7523) instead of a secret.
          client_id: 'agentgate-pkjwt',
          grant_types: [],
          redirect_uris: [],
          response_types: [],
          token_endpoint_auth_method: 'private_key_jwt',
          token_endpoint_auth_signing_alg: 'ES256',
          jwks: gatewayClientJwks,
        }]
      : []),
  ],
  jwks,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'api://agentgate',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource === 'api://agentgate') {
          return { scope: 'orders.read orders.write', audience: 'api://agentgate', accessTokenTTL: 600, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        }
        // Short-lived tokens for tests of what happens when a session outlives its token.
        if (resource === 'api://agentgate-short') {
          return { scope: 'orders.read', audience: 'api://agentgate', accessTokenTTL: 3, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        }
        if (resource === 'api://opaque') {
          return { scope: 'orders.read', audience: 'api://opaque', accessTokenTTL: 600, accessTokenFormat: 'opaque' };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
  extraTokenClaims: async (ctx, token) => ({ groups: token.clientId === 'ci-agent' ? ['ai-agents', 'dba'] : ['others'] }),
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
process.on('SIGTERM', () => process.exit(0));
