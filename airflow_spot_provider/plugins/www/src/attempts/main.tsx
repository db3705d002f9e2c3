// Entry of the "SpotAttempts" bundle: the task instance tab. The default export becomes globalThis.SpotAttempts.
import { SpotAttempts } from "./SpotAttempts";

export default SpotAttempts;
