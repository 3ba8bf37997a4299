//! Building a [`Lethe`]: which reader, which policy and render profile (explicit settings win,
//! then what the reader declares, then the defaults), and opening the store.

use crate::*;

/// Which model reads pages back (and encodes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reader {
    /// The reader embedded in the build ([`OcrModel::embedded`]): the default.
    #[default]
    Embedded,
    /// A checkpoint folder, such as the real DeepSeek-OCR ([`OcrModel::load`]).
    Folder(PathBuf),
    /// No model: pages are rendered, stored and counted, but not encoded or read back.
    None,
}

impl Reader {
    /// Loads the model this names (`None` for [`Reader::None`]).
    pub fn load(&self, options: OcrOptions) -> Result<Option<OcrModel>> {
        Ok(match self {
            Reader::Embedded => Some(OcrModel::embedded(options)?),
            Reader::Folder(dir) => Some(OcrModel::load(dir, options)?),
            Reader::None => None,
        })
    }
}

/// Builder of a [`Lethe`] memory.
#[derive(Debug)]
pub struct LetheBuilder {
    path: PathBuf,
    policy: Option<Policy>,
    profile: Option<RenderProfile>,
    reader: Reader,
    ocr: OcrOptions,
    hot_turns: usize,
    retain_text: bool,
    cache_tokens: bool,
    wait: Option<std::time::Duration>,
    remote: Option<RemoteDecoder>,
}

impl LetheBuilder {
    pub(crate) fn new(path: &Path) -> Self {
        LetheBuilder {
            path: path.to_path_buf(),
            policy: None,
            profile: None,
            reader: Reader::default(),
            ocr: OcrOptions::default(),
            hot_turns: DEFAULT_HOT_TURNS,
            retain_text: true,
            cache_tokens: true,
            wait: None,
            remote: None,
        }
    }

    /// The forgetting policy (default: [`Policy::default`], documented in `policies/default.toml`).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The render profile for new pages (default: the reader's declared profile, else
    /// [`RenderProfile::default`]).
    pub fn profile(mut self, profile: RenderProfile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// A DeepSeek-OCR checkpoint folder (`config.json`, `*.safetensors`, `tokenizer.json`) to
    /// encode pages and decode them back, instead of the embedded reader.
    pub fn model(mut self, dir: impl Into<PathBuf>) -> Self {
        self.reader = Reader::Folder(dir.into());
        self
    }

    /// Which reader encodes pages and decodes them back (default [`Reader::Embedded`]).
    pub fn reader(mut self, reader: Reader) -> Self {
        self.reader = reader;
        self
    }

    /// Options of the model (prompt, token limit, quantisation).
    pub fn ocr_options(mut self, options: OcrOptions) -> Self {
        self.ocr = options;
        self
    }

    /// How many of the most recent turns stay as text (default [`DEFAULT_HOT_TURNS`]).
    pub fn hot_turns(mut self, turns: usize) -> Self {
        self.hot_turns = turns;
        self
    }

    /// Whether pages keep their text beside the image (default true).
    pub fn retain_text(mut self, retain: bool) -> Self {
        self.retain_text = retain;
        self
    }

    /// Whether every page's vision tokens are encoded and stored as the page is written and each
    /// time it changes tier (default true: [`Lethe::context`] and recall then skip the encoder).
    /// Off, pages are encoded when they are read, and writing them costs no encoder time.
    pub fn cache_tokens(mut self, cache: bool) -> Self {
        self.cache_tokens = cache;
        self
    }

    /// When another process has the store open, wait up to this long for it (default: fail at
    /// once with an error that names the holder's PID).
    pub fn wait(mut self, wait: Option<std::time::Duration>) -> Self {
        self.wait = wait;
        self
    }

    /// Reads pages back on a remote DeepSeek-OCR server ([`RemoteDecoder`]) instead of the
    /// local model's decoder. Pair it with `reader(Reader::None)` when nothing is encoded here:
    /// pages are then drawn with the default render profile, the one the real model reads.
    pub fn remote_decoder(mut self, remote: RemoteDecoder) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Opens (or creates) the store and loads the model, if any.
    pub fn build(self) -> Result<Lethe> {
        let model = self.reader.load(self.ocr)?;
        // Explicit settings win; then what the reader declares; then the defaults.
        let profile = self
            .profile
            .or_else(|| model.as_ref().and_then(|m| m.render_profile().cloned()))
            .unwrap_or_default();
        let policy = self
            .policy
            .or_else(|| model.as_ref().and_then(|m| m.policy().cloned()))
            .unwrap_or_default();
        let store = Store::open_with(
            StoreOptions::builder()
                .path(&self.path)
                .retain_text(self.retain_text)
                .wait(self.wait)
                .build()?,
        )?;
        // Due stamps were set by the policy in force when they were written: under another policy
        // every page is looked at again once.
        let fingerprint = format!("{:016x}", fnv1a(policy.to_toml()?.as_bytes()));
        if store.tag(POLICY_TAG)?.as_deref() != Some(fingerprint.as_str()) {
            store.mark_all_due()?;
            store.set_tag(POLICY_TAG, &fingerprint)?;
        }
        let renderer = Renderer::builder().profile(profile.clone()).build()?;
        let profile_json = serde_json::to_string(&profile)
            .map_err(|e| Error::Invalid(format!("render profile: {e}")))?;
        // Text tokens are counted with the DeepSeek-OCR tokenizer, so ratios compare across
        // readers; a checkpoint folder with its own tokenizer counts with that one.
        let tokenizer = match &model {
            Some(m) if !m.is_embedded() => m.text_tokenizer()?,
            _ => Tokenizer::deepseek_ocr()?,
        };
        Ok(Lethe {
            store,
            policy,
            renderer,
            profile,
            profile_json,
            model,
            remote: self.remote,
            tokenizer,
            hot_turns: self.hot_turns,
            cache_tokens: self.cache_tokens,
            touched: Mutex::new(None),
        })
    }
}
