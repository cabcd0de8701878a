#!/usr/bin/env node
// Serves the prebuilt OHIF viewer (dist/ of the npm package @ohif/app) and proxies /dicom-web/ to a
// DICOMweb server (Orthanc's DICOMweb plugin), both from one origin, so the browser needs no CORS.
//
//   node serve.mjs --dicomweb http://127.0.0.1:8042/dicom-web [--host 127.0.0.1] [--port 3000]
//
// The viewer's configuration (/app-config.js) is generated here: one DICOMweb data source at
// <this origin>/dicom-web, no investigational-use dialog, no network access beyond this origin.
// On start it prints one line, "viewer listening on http://HOST:PORT", which callers wait for.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = {
    host: '127.0.0.1',
    port: 3000,
    dicomweb: 'http://127.0.0.1:8042/dicom-web',
    dist: path.join(here, 'node_modules', '@ohif', 'app', 'dist'),
    name: 'Orthanc',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) || argv[i + 1] === undefined) {
      throw new Error(`unknown or incomplete option ${argv[i]}`);
    }
    args[key] = key === 'port' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return args;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.ttf': 'font/ttf',
  '.txt': 'text/plain; charset=utf-8',
  '.xml': 'application/xml',
  '.onnx': 'application/octet-stream',
};

function appConfig(name) {
  // Orthanc's DICOMweb plugin: QIDO without includefield, WADO-RS frames and bulk data.
  // Two customizations:
  // - autoCineModalities: no cine player opening over single ultrasound images;
  // - onBeforeSRAddMeasurement: OHIF 3.13 reads measurement.coords[0].ReferencedSOPSequence for every
  //   measurement of a TID 1500 report (extensions/cornerstone-dicom-sr, getSopClassHandlerModule,
  //   _checkIfCanAddMeasurementsToDisplaySet) and the viewer route fails ("Cannot read properties of
  //   undefined (reading 'ReferencedSOPSequence')") on a measurement group without image coordinates,
  //   such as the node's classification group (TID 1501). Giving such a measurement an empty coordinate
  //   makes OHIF skip it, as it skips coordinates on images it does not show.
  return `window.config = {
  name: 'samie-node viewer',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {
    autoCineModalities: { $set: [] },
    onBeforeSRAddMeasurement: {
      $set: ({ measurement }) => (measurement.coords && measurement.coords.length ? measurement : { ...measurement, coords: [{}] }),
    },
  },
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: ${JSON.stringify(name)},
        name: 'dicomweb',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
`;
}

function proxy(req, res, upstream) {
  const target = new URL(upstream);
  const suffix = req.url.slice('/dicom-web'.length);
  const headers = { ...req.headers };
  // Orthanc builds the URLs it returns (BulkDataURI, RetrieveURL) from Host: keep the browser's origin.
  const forwarded = http.request(
    {
      host: target.hostname,
      port: target.port || 80,
      method: req.method,
      path: target.pathname.replace(/\/$/, '') + suffix,
      headers,
    },
    (upstreamRes) => {
      res.writeHead(upstreamRes.statusCode || 502, upstreamRes.headers);
      upstreamRes.pipe(res);
    },
  );
  forwarded.on('error', (err) => {
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
    }
    res.end(`DICOMweb upstream ${upstream} failed: ${err.message}\n`);
  });
  req.pipe(forwarded);
}

function serveFile(req, res, dist, name) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/app-config.js') {
    res.writeHead(200, { 'content-type': TYPES['.js'], 'cache-control': 'no-store' });
    res.end(appConfig(name));
    return;
  }
  let file = path.normalize(path.join(dist, decodeURIComponent(url.pathname)));
  if (!file.startsWith(dist)) {
    res.writeHead(403).end();
    return;
  }
  let stat = fs.statSync(file, { throwIfNoEntry: false });
  if (!stat || stat.isDirectory()) {
    // The viewer is a single-page app: its routes (/viewer, /segmentation, ...) are index.html.
    if (path.extname(url.pathname) && !(stat && stat.isDirectory())) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    file = path.join(dist, 'index.html');
    stat = fs.statSync(file);
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
    'content-length': stat.size,
    'cache-control': 'no-cache',
  });
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  fs.createReadStream(file).pipe(res);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const dist = path.resolve(args.dist);
  if (!fs.existsSync(path.join(dist, 'index.html'))) {
    console.error(`no OHIF build at ${dist}: run "npm ci" in tests/viewer`);
    process.exit(2);
  }
  const server = http.createServer((req, res) => {
    if (req.url === '/dicom-web' || req.url.startsWith('/dicom-web/') || req.url.startsWith('/dicom-web?')) {
      proxy(req, res, args.dicomweb);
    } else if (req.method === 'GET' || req.method === 'HEAD') {
      serveFile(req, res, dist, args.name);
    } else {
      res.writeHead(405).end();
    }
  });
  server.listen(args.port, args.host, () => {
    const { port } = server.address();
    console.log(`viewer listening on http://${args.host}:${port}`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => server.close(() => process.exit(0)));
  }
}

main();
