// Node google-auth-library through Application Default Credentials, unmodified, against
// whatever metadata server GCE_METADATA_HOST names (test_sidecar_clients.py: the broker's
// metadata sidecar). Prints one JSON object: the ADC client's class, an access token
// (getAccessToken) and its expiry, the project id (getProjectId), and an ID token for the
// audience given as the first argument from an ID token client (getIdTokenClient, then its
// idTokenProvider.fetchIdToken, and the Authorization header it puts on requests). With a
// service-account email as the second argument, also an access token and an ID token of that
// account, from a Compute client that names it (serviceAccountEmail).
'use strict';

require('./loopback-guard');
const {Compute, GoogleAuth} = require('google-auth-library');

function authorization(headers) {
  if (headers && typeof headers.get === 'function') return headers.get('authorization');
  return headers && (headers.Authorization || headers.authorization);
}

async function main() {
  const [audience, email] = process.argv.slice(2);
  if (!audience) throw new Error('usage: node adc.js AUDIENCE [SERVICE_ACCOUNT_EMAIL]');
  const auth = new GoogleAuth();
  const client = await auth.getClient();
  const accessToken = await auth.getAccessToken();
  const projectId = await auth.getProjectId();
  const idClient = await auth.getIdTokenClient(audience);
  const idToken = await idClient.idTokenProvider.fetchIdToken(audience);
  const header = authorization(await idClient.getRequestHeaders());
  let account = null;
  if (email) {
    const compute = new Compute({serviceAccountEmail: email});
    const token = await compute.getAccessToken();
    account = {
      email,
      accessToken: token.token,
      expiryDate: compute.credentials.expiry_date,
      idToken: await compute.fetchIdToken(audience),
    };
  }
  const version = require('google-auth-library/package.json').version;
  process.stdout.write(JSON.stringify({
    googleAuthLibrary: version,
    node: process.version,
    client: client.constructor.name,
    accessToken,
    expiryDate: client.credentials && client.credentials.expiry_date,
    projectId,
    idTokenProvider: idClient.idTokenProvider.constructor.name,
    idToken,
    idTokenHeader: header,
    account,
  }) + '\n');
}

main().catch((error) => {
  process.stderr.write(`${(error && error.stack) || error}\n`);
  process.exit(1);
});
