// Drives the standard tus client tus-js-client (npm), unmodified, against
// the receiver (SPEC section 8): creates an upload in 1 MiB chunks and
// aborts it after two, then a new Upload finds the stored upload URL
// (FileUrlStorage), asks the receiver for the offset and finishes it.
// Prints "resume offset N" for the test to check.
//
// usage: node tus_upload.js ENDPOINT TOKEN FILE EPISODE_ID COMMIT SHA256
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const tus = require('tus-js-client');

const [endpoint, token, file, episodeId, commit, sha256] = process.argv.slice(2);
const body = fs.readFileSync(file);
const urls = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tus-js-')), 'urls.json');
const CHUNK = 1 << 20;

function upload(onPatch, callbacks) {
  return new tus.Upload(body, {
    endpoint,
    headers: { Authorization: `Bearer ${token}` },
    metadata: { episode_id: episodeId, commit, sha256 },
    uploadSize: body.length,
    chunkSize: CHUNK,
    retryDelays: [0, 200, 500, 1000, 2000],
    urlStorage: new tus.FileUrlStorage(urls),
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    fingerprint: async () => `ferry-${episodeId}`,
    onBeforeRequest(req) {
      if (req.getMethod() === 'PATCH') onPatch(Number(req.getHeader('Upload-Offset')));
    },
    onError(err) {
      console.error('upload failed:', err);
      process.exit(1);
    },
    ...callbacks,
  });
}

function first() {
  return new Promise((resolve) => {
    const up = upload(() => {}, {
      onChunkComplete(_size, accepted) {
        if (accepted >= 2 * CHUNK) {
          console.log('aborted at', accepted, 'of', body.length);
          up.abort().then(resolve);
        }
      },
      onSuccess() {
        console.error('the upload finished before it could be aborted');
        process.exit(1);
      },
    });
    up.start();
  });
}

async function second() {
  let logged = false;
  const up = upload((offset) => {
    if (!logged) console.log('resume offset', offset);
    logged = true;
  }, {
    onSuccess() {
      console.log('done');
      process.exit(0);
    },
  });
  const previous = await up.findPreviousUploads();
  if (previous.length === 0) {
    console.error('no stored upload URL to resume');
    process.exit(1);
  }
  up.resumeFromPreviousUpload(previous[0]);
  up.start();
}

first().then(second);
