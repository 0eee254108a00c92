// Thin commands: argument parsing, progress display and errors for people.
export {};
