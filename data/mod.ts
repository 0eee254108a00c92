/**
 * Data layer: tokenizer, chat template, corpus readers, dataset preparation, batching.
 * See each module for formats and shapes.
 */
export {
  type DecodeOptions,
  type EncodeOptions,
  LlamaTokenizer,
  type TokenizerConfig,
  validateTokenizerJson,
} from "./tokenizer.ts";
export {
  type ChatMessage,
  type ChatRole,
  ChatTemplate,
  DEFAULT_DATE_STRING,
  encodeChat,
  type EncodedChat,
  encodePrompt,
  IGNORE_INDEX,
} from "./chat_template.ts";
export {
  type CorpusReader,
  type CorpusRecord,
  CSV_COLUMNS,
  CsvCorpusReader,
  JsonlChatReader,
  readerFor,
} from "./corpus.ts";
export {
  cleanText,
  DatasetProcessor,
  type DropReason,
  percentile,
  type PreparedDataset,
  type PreparedExample,
  type PrepareOptions,
  type PrepareStats,
  readPreparedJsonl,
  writeJsonl,
} from "./dataset_processor.ts";
export {
  type Batch,
  type BatcherOptions,
  type BatchPlan,
  collate,
  LengthBucketedBatcher,
  type PaddingReport,
} from "./batching.ts";
export {
  buildLlama3TokenizerJson,
  LLAMA3_SPECIAL_TOKENS,
  LLAMA3_SPLIT_REGEX,
  type TokenizerJson,
  trainByteLevelBpe,
} from "./bpe_trainer.ts";
export { readTextStrict, writeDirAtomic } from "./fs_util.ts";
export { mulberry32, shuffleInPlace } from "./rng.ts";
