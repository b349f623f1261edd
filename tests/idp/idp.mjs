#!/usr/bin/env node
// Test OpenID provider for oidc-edge: panva's oidc-provider (v9) configured to look,
// from a relying party's side, like Pocket ID (a passkey-first OIDC provider).
//
//   node tests/idp/idp.mjs --port P [--config FILE]
//
// What a relying party sees, and why each knob is set (see README.md for usage):
//   - issuer exactly as configured; discovery, JWKS, userinfo, end-session at the
//     oidc-provider default paths (the RP must read them from discovery);
//   - JWKS with one RSA (RS256), one EC P-256 (ES256) and one Ed25519 (EdDSA) key;
//     each client's id_token_signed_response_alg picks the key that signs its ID tokens;
//   - Pocket ID's claim set, carried in the ID token itself (not only userinfo);
//   - PKCE S256 always; refresh token on every code exchange with strict rotation
//     (reuse kills the whole grant); every refresh re-reads the user record;
//   - no consent screen; the "login" is a user picker whose links are plain GETs,
//     so a cookie jar that follows redirects completes a login without a browser;
//   - RP-initiated logout with a valid id_token_hint redirects at once (as Pocket ID);
//   - /test/* control endpoints (stats, user edits) for the test suite.
// Only 127.0.0.1 is ever bound.

import { createECDH, createHash, createHmac, createPrivateKey, checkPrimeSync, sign as cryptoSign,
  generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider, { interactionPolicy } from 'oidc-provider';

const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------
// Command line and configuration
// ---------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    config: { type: 'string' },
  },
});
const port = Number(args.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node idp.mjs --port P [--config FILE]');
  process.exit(2);
}

function defaultConfig() {
  return {
    issuer: `http://${HOST}:${port}`,
    clients: [{
      client_id: 'oidc-edge',
      client_secret: 'demo-secret',
      redirect_uris: ['http://127.0.0.1:8080/oauth2/callback'],
      post_logout_redirect_uris: ['http://127.0.0.1:8080/'],
      id_token_signed_response_alg: 'RS256',
      grant_types: ['authorization_code', 'refresh_token'],
    }],
  };
}

const config = args.config ? JSON.parse(readFileSync(args.config, 'utf8')) : defaultConfig();
if (typeof config.issuer !== 'string' || !config.issuer) {
  throw new Error('config: "issuer" must be a non-empty string');
}
if (!Array.isArray(config.clients) || config.clients.length === 0) {
  throw new Error('config: "clients" must be a non-empty array');
}
const SIGNING_ALGS = ['RS256', 'ES256', 'EdDSA'];

const clients = config.clients.map((c) => {
  const alg = c.id_token_signed_response_alg ?? 'RS256';
  if (!SIGNING_ALGS.includes(alg)) {
    throw new Error(`config: client ${c.client_id}: id_token_signed_response_alg must be one of ${SIGNING_ALGS}`);
  }
  return {
    // token_endpoint_auth_method is left at its default (client_secret_basic):
    // oidc-provider accepts client_secret_post as well for such a client.
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    post_logout_redirect_uris: [],
    ...c,
    id_token_signed_response_alg: alg,
  };
});

// ---------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------
// Three keys, one per algorithm the RP must support. Where they come from:
//   keys_file (config) or IDP_KEYS_FILE (env): load that JWKS file if it exists,
//     else generate and write it, so a restart keeps the keys;
//   keys_seed (config): derive the keys deterministically from the string, so any
//     run with the same seed has the same keys (no file needed);
//   neither: fresh random keys, so a restart is a key rotation.

// RFC 7638 JWK thumbprint, used as the kid.
function thumbprint(jwk) {
  const members = {
    RSA: { e: jwk.e, kty: 'RSA', n: jwk.n },
    EC: { crv: jwk.crv, kty: 'EC', x: jwk.x, y: jwk.y },
    OKP: { crv: jwk.crv, kty: 'OKP', x: jwk.x },
  }[jwk.kty];
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function finishJwk(jwk, alg) {
  return { ...jwk, alg, use: 'sig', kid: thumbprint(jwk) };
}

function randomKeys() {
  const jwk = (type, opts) => generateKeyPairSync(type, opts).privateKey.export({ format: 'jwk' });
  return [
    finishJwk(jwk('rsa', { modulusLength: 2048 }), 'RS256'),
    finishJwk(jwk('ec', { namedCurve: 'P-256' }), 'ES256'),
    finishJwk(jwk('ed25519'), 'EdDSA'),
  ];
}

// Deterministic byte stream from the seed (HMAC-SHA512 in counter mode).
function seededStream(seed, label) {
  let counter = 0;
  return (n) => {
    const blocks = [];
    for (let have = 0; have < n; have += 64) {
      blocks.push(createHmac('sha512', seed).update(`${label}/${counter++}`).digest());
    }
    return Buffer.concat(blocks).subarray(0, n);
  };
}

const toB64u = (big) => {
  const hex = big.toString(16);
  return Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex').toString('base64url');
};
const fromBuf = (buf) => BigInt(`0x${buf.toString('hex')}`);

function modInverse(a, m) {
  let [oldR, r] = [((a % m) + m) % m, m];
  let [oldS, s] = [1n, 0n];
  while (r !== 0n) {
    const q = oldR / r;
    [oldR, r] = [r, oldR - q * r];
    [oldS, s] = [s, oldS - q * s];
  }
  return ((oldS % m) + m) % m;
}

// node:crypto cannot seed its RSA generator, so search primes from the seeded stream.
function seededRsaJwk(rand) {
  const e = 65537n;
  const prime = () => {
    for (;;) {
      const buf = rand(128);
      buf[0] |= 0xc0; // top two bits set: p*q is exactly 2048 bits
      buf[127] |= 1;
      const p = fromBuf(buf);
      if ((p - 1n) % e !== 0n && checkPrimeSync(p)) return p;
    }
  };
  const p = prime();
  let q = prime();
  while (q === p) q = prime();
  const d = modInverse(e, (p - 1n) * (q - 1n));
  return {
    kty: 'RSA', n: toB64u(p * q), e: toB64u(e), d: toB64u(d), p: toB64u(p), q: toB64u(q),
    dp: toB64u(d % (p - 1n)), dq: toB64u(d % (q - 1n)), qi: toB64u(modInverse(q, p)),
  };
}

function seededEcJwk(rand) {
  for (;;) {
    const d = rand(32);
    try {
      const ecdh = createECDH('prime256v1');
      ecdh.setPrivateKey(d); // throws if d is not a valid scalar (0 or >= n)
      const pub = ecdh.getPublicKey(null, 'uncompressed'); // 0x04 || x || y
      return {
        kty: 'EC', crv: 'P-256', d: d.toString('base64url'),
        x: pub.subarray(1, 33).toString('base64url'), y: pub.subarray(33).toString('base64url'),
      };
    } catch { /* astronomically rare: draw again */ }
  }
}

function seededEd25519Jwk(rand) {
  // PKCS#8 wrapper for a raw 32-byte Ed25519 seed (RFC 8410).
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), rand(32)]);
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
}

function seededKeys(seed) {
  const keys = [
    finishJwk(seededRsaJwk(seededStream(seed, 'rsa')), 'RS256'),
    finishJwk(seededEcJwk(seededStream(seed, 'ec')), 'ES256'),
    finishJwk(seededEd25519Jwk(seededStream(seed, 'ed25519')), 'EdDSA'),
  ];
  keys.forEach((jwk) => createPrivateKey({ key: jwk, format: 'jwk' })); // sanity: they import
  return keys;
}

function loadKeys() {
  const file = process.env.IDP_KEYS_FILE || config.keys_file;
  if (file && existsSync(file)) {
    const { keys } = JSON.parse(readFileSync(file, 'utf8'));
    const algs = keys.map((k) => k.alg).sort().join(',');
    if (algs !== [...SIGNING_ALGS].sort().join(',')) {
      throw new Error(`${file}: expected one key for each of ${SIGNING_ALGS}`);
    }
    return keys;
  }
  const keys = config.keys_seed !== undefined ? seededKeys(String(config.keys_seed)) : randomKeys();
  if (file) writeFileSync(file, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
  return keys;
}

// ---------------------------------------------------------------------------
// Users (in memory, editable through PUT /test/users/<name>)
// ---------------------------------------------------------------------------

// Pocket ID subjects are UUIDs. Derive one from the login name so a user keeps the
// same sub across restarts and across users created at runtime.
function subFor(name) {
  const h = createHash('sha256').update(`oidc-edge-test-idp:${name}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-`
    + `${((parseInt(h[16], 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

// Records are keyed by login name (username, = preferred_username); "name" is the
// display name, as in the claim.
const users = new Map();
function putUser(username, fields) {
  const current = users.get(username)
    ?? { username, sub: subFor(username), name: username, groups: [], disabled: false };
  const next = { ...current, ...fields };
  // email: null (or "") removes the address; a user without one gets neither email claim.
  if (!next.email) {
    delete next.email;
    delete next.email_verified;
  } else if (typeof next.email_verified !== 'boolean') {
    next.email_verified = false; // Pocket ID's default
  }
  users.set(username, next);
  return next;
}
putUser('alice', {
  name: 'Alice Admin', groups: ['admins', 'users'],
  email: 'alice@example.com', email_verified: true,
});
putUser('bob', {
  name: 'Bob User', groups: ['users'], email: 'bob@example.com', email_verified: false,
});
putUser('carol', { name: 'Carol NoGroups', groups: [] });

const userBySub = (sub) => [...users.values()].find((u) => u.sub === sub);

// The record's fields that PUT may set, with a type check for each.
const USER_FIELDS = {
  groups: (v) => Array.isArray(v) && v.every((g) => typeof g === 'string'),
  email: (v) => v === null || typeof v === 'string',
  email_verified: (v) => typeof v === 'boolean',
  name: (v) => typeof v === 'string', // display name
  given_name: (v) => typeof v === 'string',
  family_name: (v) => typeof v === 'string',
  picture: (v) => v === null || typeof v === 'string',
  disabled: (v) => typeof v === 'boolean',
  // How the user signs in: the ID token's amr (default ['phr'], a passkey, as
  // Pocket ID says) and, when set, its acr.
  amr: (v) => Array.isArray(v) && v.every((m) => typeof m === 'string'),
  acr: (v) => v === null || typeof v === 'string',
};

// All claims of a user; oidc-provider keeps those the granted scopes allow.
function claimsOf(user) {
  const [first, ...rest] = user.name.split(' ');
  const claims = {
    sub: user.sub,
    name: user.name,
    given_name: user.given_name ?? first,
    family_name: user.family_name ?? rest.join(' '),
    preferred_username: user.username,
    groups: [...user.groups],
  };
  if (user.picture) claims.picture = user.picture;
  if (user.email) {
    claims.email = user.email;
    claims.email_verified = user.email_verified;
  }
  return claims;
}

// ---------------------------------------------------------------------------
// Request counters (GET /test/stats)
// ---------------------------------------------------------------------------

function zeroStats() {
  return {
    token: { authorization_code: 0, refresh_token: 0, refresh_failed: 0 },
    jwks: 0, discovery: 0, userinfo: 0, end_session: 0, logins: 0, authorize: 0, backchannel_logout: 0,
  };
}
let stats = zeroStats();

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

// Cookies ignore ports: the RP also runs on 127.0.0.1, so every IdP cookie gets an
// idp_ prefix (oidc-provider's defaults _session, _interaction, ... would collide).
const cookies = {
  names: { session: 'idp_session', interaction: 'idp_interaction', resume: 'idp_interaction_resume' },
  long: { httpOnly: true, sameSite: 'lax', signed: true },
  short: { httpOnly: true, sameSite: 'lax', signed: true },
  keys: [randomBytes(32).toString('base64url')],
};

const keys = loadKeys();

// Grant everything the request asks for (scopes and claims): there is no consent step.
async function grantAll(ctx, accountId, existingGrantId) {
  const { Grant } = ctx.oidc.provider;
  let grant = existingGrantId ? await Grant.find(existingGrantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new Grant({ accountId, clientId: ctx.oidc.client.clientId });
  }
  grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
  const claims = [...ctx.oidc.requestParamClaims]; // the "claims" request parameter
  if (claims.length) grant.addOIDCClaims(claims);
  await grant.save();
  return grant;
}

// A browser session whose user was disabled (or whose record vanished) must see the
// login page again. oidc-provider only asks for a login when the session has no
// account at all; with an account id that findAccount no longer resolves, it goes on
// to the consent checks and fails with a server_error. So add a login check.
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'account_unavailable',
  'the signed-in user is disabled or no longer exists',
  'login_required',
  (ctx) => Boolean(ctx.oidc.session.accountId && !ctx.oidc.account),
));

const ttl = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  IdToken: 3600,
  RefreshToken: 14 * 24 * 3600,
  Interaction: 3600,
  Session: 14 * 24 * 3600,
  Grant: 14 * 24 * 3600,
  ...config.ttl, // optional overrides, in seconds (e.g. short ID tokens for expiry tests)
};

const provider = new Provider(config.issuer, {
  clients,
  jwks: { keys },
  cookies,
  ttl,

  // `"groups": false` in the config: a provider with no groups at all (as
  // some are), for the checks that a route's groups rule can work.
  scopes: ['openid', 'offline_access', 'email', 'profile', ...(config.groups === false ? [] : ['groups'])],
  claims: {
    // amr and auth_time are masked out of the ID token unless listed as claims.
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'picture'],
    ...(config.groups === false ? {} : { groups: ['groups'] }),
  },
  // Else the ID token carries only sub (and the rest only at userinfo); Pocket ID
  // puts the scope claims in the ID token.
  conformIdTokenClaims: false,

  // Advertise what Pocket ID offers, not oidc-provider's wider defaults.
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  pkce: { required: () => true }, // v9 supports S256 only

  async findAccount(ctx, sub) {
    const user = userBySub(sub);
    // undefined makes refresh fail with invalid_grant and sends an authorize request
    // with a session for this user back to the login page: Pocket ID re-checks the
    // user on every refresh.
    if (!user || user.disabled) return undefined;
    return {
      accountId: sub,
      // Read the record when the claims are issued, not now, so a refresh after
      // PUT /test/users shows the current groups.
      claims: async () => claimsOf(userBySub(sub)),
    };
  },

  // No consent screen: every authorization gets a grant for what it requested.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    return grantAll(ctx, ctx.oidc.session.accountId, grantId);
  },

  // Pocket ID: a refresh token on every code exchange, no offline_access needed ...
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // ... that lives on its own, not tied to the IdP browser session ...
  expiresWithSession: async () => false,
  // ... with strict rotation: reusing a rotated token fails and revokes the grant.
  rotateRefreshToken: true,

  // Relying parties here live on 127.0.0.1, which oidc-provider's SSRF guard
  // refuses to call (back-channel logout): the test IdP calls them anyway.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },

  features: {
    devInteractions: { enabled: false }, // replaced by the routes below
    userinfo: { enabled: true },
    pushedAuthorizationRequests: { enabled: false }, // on by default in v9
    // OpenID Connect Back-Channel Logout: clients registered with a
    // backchannel_logout_uri get a signed logout token when the IdP session ends.
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource,
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Signed out', '<p>You are signed out of the test IdP.</p>');
      },
    },
  },

  interactions: { policy, url: async (ctx, interaction) => `/interaction/${interaction.uid}` },

  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Test IdP error', Object.entries(out)
      .map(([k, v]) => `<p><b>${esc(k)}</b>: ${esc(v)}</p>`).join(''));
  },
});

// oidc-provider answers a bug in this file or in itself with a bare server_error;
// print the cause so a failing test shows it.
provider.on('server_error', (ctx, err) => console.error(`server_error on ${ctx.method} ${ctx.path}:`, err));
// A refused token request: the error code and description (never a token or secret).
provider.on('grant.error', (ctx, err) =>
  console.error(`grant.error: ${err.error ?? err.name}: ${err.error_description ?? err.message}`));

// Plain http on 127.0.0.1, no reverse proxy in front: trust no X-Forwarded-* header.
provider.proxy = false;

// --- small helpers ---------------------------------------------------------

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>`
    + `<body><h1>${esc(title)}</h1>${body}</body></html>\n`;
}

// Only shown without a valid id_token_hint (with one, the end-session middleware
// below redirects at once): the confirmation form. Submitting it as logout=yes ends the IdP session.
async function logoutSource(ctx, form) {
  ctx.body = page('Test IdP — sign out?', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

function sendError(ctx, status, message) {
  ctx.status = status;
  ctx.type = 'html';
  ctx.body = page('Test IdP error', `<p>${esc(message)}</p>`);
}

async function readJson(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > 64 * 1024) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw Object.assign(new Error('body is not JSON'), { status: 400 });
  }
}

// --- middleware (provider.use puts each before oidc-provider's own routes) ----

// Count requests by path; the token endpoint by grant_type once oidc-provider has
// parsed the body (reading it here would consume the stream).
// `"clock_offset": seconds` in the config: the provider's clock (its Date
// header) runs that far ahead, for the clock-skew checks.
if (config.clock_offset) {
  provider.use(async (ctx, next) => {
    await next();
    ctx.set('Date', new Date(Date.now() + config.clock_offset * 1000).toUTCString());
  });
}

provider.use(async (ctx, next) => {
  const { path, method } = ctx;
  if (path === '/.well-known/openid-configuration') stats.discovery += 1;
  else if (path === '/jwks') stats.jwks += 1;
  else if (path === '/me') stats.userinfo += 1;
  else if (path === '/auth') stats.authorize += 1;
  else if (path === '/session/end') stats.end_session += 1;
  await next();
  if (path === '/token' && method === 'POST') {
    const grantType = ctx.oidc?.params?.grant_type;
    if (grantType === 'authorization_code') stats.token.authorization_code += 1;
    if (grantType === 'refresh_token') {
      stats.token.refresh_token += 1;
      if (ctx.status !== 200) stats.token.refresh_failed += 1;
    }
  }
});

// Test-control endpoints.
provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/test/')) return next();
  ctx.set('cache-control', 'no-store');
  try {
    const userPath = ctx.path.match(/^\/test\/users\/([^/]+)$/);
    if (ctx.path === '/test/health' && ctx.method === 'GET') {
      ctx.body = { ok: true };
    } else if (ctx.path === '/test/stats' && ctx.method === 'GET') {
      ctx.body = stats;
    } else if (ctx.path === '/test/reset-stats' && ctx.method === 'POST') {
      stats = zeroStats();
      ctx.body = stats;
    } else if (ctx.path === '/test/jwt' && ctx.method === 'POST') {
      // A JWT signed with this provider's own key for `alg` (as its access
      // tokens would be), for API clients in the tests: any claims, so that
      // expired, foreign-audience or group-less tokens can be made too.
      const body = await readJson(ctx);
      ctx.body = { token: signJwt(body?.claims ?? {}, body?.alg ?? 'RS256', body?.typ ?? 'at+jwt', body?.header ?? {}) };
    } else if (ctx.path === '/test/age-session' && ctx.method === 'POST') {
      // The browser's single sign-on session (its cookie) as if its sign-in
      // were `seconds` older: what a gate sees from a provider that answers
      // a plain login with a sign-in made long before.
      const body = await readJson(ctx);
      const seconds = body?.seconds;
      if (!Number.isInteger(seconds) || seconds < 0) throw Object.assign(new Error('seconds must be a whole number'), { status: 400 });
      const id = ctx.cookies.get(provider.cookieName('session'));
      const session = id && await provider.Session.find(id);
      if (!session?.accountId) throw Object.assign(new Error('no signed-in session for this browser'), { status: 404 });
      session.loginTs -= seconds;
      const now = Math.floor(Date.now() / 1000);
      await session.save(Math.max(60, (session.exp ?? now + 3600) - now));
      ctx.body = { auth_time: session.loginTs };
    } else if (ctx.path === '/test/users' && ctx.method === 'GET') {
      ctx.body = [...users.values()];
    } else if (userPath && ctx.method === 'GET') {
      const user = users.get(decodeURIComponent(userPath[1]));
      if (user) ctx.body = user;
      else { ctx.status = 404; ctx.body = { error: 'no such user' }; }
    } else if (userPath && ctx.method === 'PUT') {
      const body = await readJson(ctx);
      if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        throw Object.assign(new Error('body must be a JSON object'), { status: 400 });
      }
      const fields = {};
      for (const [k, v] of Object.entries(body)) {
        if (!USER_FIELDS[k]?.(v)) {
          throw Object.assign(new Error(`bad or unknown field: ${k}`), { status: 400 });
        }
        fields[k] = v;
      }
      ctx.body = putUser(decodeURIComponent(userPath[1]), fields);
    } else {
      ctx.status = 404;
      ctx.body = { error: 'unknown test endpoint' };
    }
  } catch (err) {
    ctx.status = err.status ?? (err instanceof URIError ? 400 : 500);
    ctx.body = { error: err.message };
  }
});

function signJwt(claims, alg, typ, extraHeader = {}) {
  const jwk = keys.find((k) => k.alg === alg);
  if (!jwk) throw Object.assign(new Error(`no key for ${alg}`), { status: 400 });
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg, kid: jwk.kid, typ, ...extraHeader })}.${b64(claims)}`;
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  const digest = alg === 'EdDSA' ? null : 'sha256';
  const signature = cryptoSign(digest, Buffer.from(input), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key);
  return `${input}.${signature.toString('base64url')}`;
}

// Log a user in: finish the interaction and send the browser on to resume the
// authorization (which then redirects to the client with code, state and iss).
async function login(ctx, details, name) {
  const user = users.get(name);
  if (!user) return sendError(ctx, 400, `unknown user: ${name}`);
  if (user.disabled) return sendError(ctx, 403, `user is disabled: ${name}`);
  if (details.session && details.session.accountId !== user.sub) {
    // Another user is signed in (prompt=login, or a disabled user). oidc-provider
    // would answer the resume with an auto-submitting logout form, which needs a
    // browser; Pocket ID just replaces the session. So end the old session here and
    // detach the interaction from it: the resume then starts a fresh session.
    const old = await provider.Session.find(details.session.cookie);
    await old?.destroy();
    details.session = undefined;
    await details.save(details.exp - Math.floor(Date.now() / 1000));
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
    // amr like Pocket ID after a passkey login, unless the user's record says otherwise.
    login: { accountId: user.sub, amr: user.amr ?? ['phr'], ...(user.acr ? { acr: user.acr } : {}) },
  }, { mergeWithLastSubmission: false });
  stats.logins += 1;
  ctx.status = 303;
  ctx.redirect(returnTo);
}

function loginPage(uid) {
  const items = [...users.values()].map((u) => {
    const href = `/interaction/${encodeURIComponent(uid)}/login?user=${encodeURIComponent(u.username)}`;
    return `<li><a href="${esc(href)}">${esc(u.username)}</a> — ${esc(u.name)}`
      + `${u.disabled ? ' (disabled)' : ''}</li>`;
  });
  return page('Test IdP — choose a user', `<ul>\n${items.join('\n')}\n</ul>`);
}

// Interaction routes, replacing oidc-provider's devInteractions.
provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m || ctx.method !== 'GET') return next();
  ctx.set('cache-control', 'no-store');
  try {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== m[1]) return sendError(ctx, 400, 'interaction does not match its cookie');
    if (details.prompt.name !== 'login') {
      // loadExistingGrant grants everything requested, so consent never comes up.
      return sendError(ctx, 500, `unexpected prompt: ${details.prompt.name}`);
    }
    if (m[2]) return login(ctx, details, String(ctx.query.user ?? ''));
    const testUser = ctx.get('x-test-user');
    if (testUser) return login(ctx, details, testUser);
    ctx.type = 'html';
    ctx.body = loginPage(details.uid);
  } catch (err) {
    // e.g. SessionNotFound: interaction cookie missing or expired.
    sendError(ctx, err.statusCode ?? err.status ?? 500, err.error_description ?? err.message);
  }
});

// X-Test-User on the authorization request: when oidc-provider sends the browser to
// the login page, send it to that user's login link instead. The interaction cookie
// is set on this same response, so the next hop carries it.
provider.use(async (ctx, next) => {
  await next();
  const testUser = ctx.get('x-test-user');
  if (ctx.path !== '/auth' || !testUser || ctx.status !== 303) return;
  const location = ctx.response.get('location');
  if (/^\/interaction\/[^/?]+$/.test(location)) {
    ctx.redirect(`${location}/login?user=${encodeURIComponent(testUser)}`);
  }
});

// RP-initiated logout. oidc-provider always asks for confirmation (a page with a
// form, or an auto-submitting form when there is no session); Pocket ID redirects at
// once when the id_token_hint is valid. So: once oidc-provider has validated the hint
// and the post_logout_redirect_uri (else it answers with an error, not 200), end the
// IdP session here and redirect. Refresh tokens are not bound to the IdP session
// (see expiresWithSession), but as Pocket ID's end-session does, the ones issued
// with the hinted ID token end with it: its client's grant in this session goes.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path !== '/session/end' || ctx.status !== 200) return;
  const { oidc } = ctx;
  if (!oidc?.entities?.IdTokenHint || !oidc.session) return;
  const { post_logout_redirect_uri: postLogout, state } = oidc.params;
  const hinted = oidc.entities.Client?.clientId ?? oidc.params.client_id;
  const grantId = hinted && oidc.session.grantIdFor(hinted);
  if (grantId) await provider.Grant.adapter.destroy(grantId);
  await backchannelLogout(oidc.session);
  await oidc.session.destroy();
  ctx.cookies.set(provider.cookieName('session'), null, cookies.long);
  let target;
  if (postLogout) {
    const url = new URL(postLogout);
    if (state !== undefined) url.searchParams.set('state', state);
    target = url.href;
  } else {
    target = oidc.urlFor('end_session_success');
  }
  ctx.status = 303;
  ctx.redirect(target);
});

// The IdP session ends: every client of it registered for back-channel logout
// gets a logout token (as oidc-provider's own end_session does), with the sid
// it saw in its ID token. A client that does not answer 200 is logged.
async function backchannelLogout(session) {
  await Promise.all(Object.keys(session.authorizations || {}).map(async (clientId) => {
    const client = await provider.Client.find(clientId);
    if (!client?.backchannelLogoutUri) return;
    stats.backchannel_logout += 1;
    await client.backchannelLogout(session.accountId, session.sidFor(clientId))
      .catch((err) => console.error(`backchannel logout to ${client.backchannelLogoutUri} failed: ${err.message} ${err.cause ?? ""}`));
  }));
}

// ---------------------------------------------------------------------------
// Serve
// ---------------------------------------------------------------------------

const server = provider.listen(port, HOST, () => {
  console.log(`IDP READY http://${HOST}:${port}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
