// Must not compile: the package's types reach a consumer even with skipLibCheck (Next.js's default).
import type { Task } from "@taskflow/client";

export const t: Task = { nonsense: 1 };
