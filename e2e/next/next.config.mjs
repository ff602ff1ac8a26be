// A static export under /next, served by make e2e's page server (e2e/server.mjs) on the
// frontend's origin, http://localhost:3000, beside Better Auth.
export default {
  output: "export",
  basePath: "/next",
  images: { unoptimized: true },
};
