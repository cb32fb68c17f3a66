// The microphone tap of kaset.js's Recorder, on the audio rendering thread (AudioWorklet).
// It only collects blocks (128 frames each) into ~85 ms batches and posts them to the page,
// which downsamples to 16 kHz: no work here that could glitch the audio thread.
const BATCH_FRAMES = 4096;

class MicTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.batch = new Float32Array(BATCH_FRAMES);
    this.filled = 0;
    // "flush" (recording stopped): what is left, marked last, even if it is nothing.
    this.port.onmessage = (event) => { if (event.data === "flush") this.flush(true); };
  }

  flush(last = false) {
    this.port.postMessage({ samples: this.batch.slice(0, this.filled), last });
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const take = Math.min(channel.length - offset, BATCH_FRAMES - this.filled);
        this.batch.set(channel.subarray(offset, offset + take), this.filled);
        this.filled += take; offset += take;
        if (this.filled === BATCH_FRAMES) this.flush();
      }
    }
    return true;  // keep running until the page disconnects the node
  }
}

registerProcessor("kaset-mic-tap", MicTap);
