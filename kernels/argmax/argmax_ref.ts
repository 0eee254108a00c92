// Reference of the argmax kernel: the CPU argmax that greedy decoding uses on the host (the
// sequential scan from index 0: the first index on ties; a NaN never compares greater, so one at
// index 0 keeps 0).

export { argmax as argmaxRef } from "../../model/sampling.ts";
